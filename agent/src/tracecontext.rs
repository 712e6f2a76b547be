//! W3C trace context (`traceparent`), as OpenTelemetry passes it to a child process in the
//! `TRACEPARENT` environment variable: the held operation is tied to the trace of the AI agent's
//! tool call.

/// A parsed `traceparent`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TraceParent {
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span: 16 lower-case hex digits, not all zero.
    pub parent_id: String,
    /// The `sampled` flag.
    pub sampled: bool,
}

fn hex_of(s: &str, len: usize) -> Option<&str> {
    (s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0'))
    .then_some(s)
}

/// Parses `version-traceid-parentid-flags`. Version `ff` is invalid; a later version may carry
/// more fields after the flags, which are ignored (as the specification asks); version `00`
/// has exactly four.
pub fn parse(value: &str) -> Option<TraceParent> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = hex_of(parts.next()?, 32)?;
    let parent_id = hex_of(parts.next()?, 16)?;
    let flags = parts.next()?;
    if version.len() != 2
        || !version
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        || version == "ff"
        || (version == "00" && parts.next().is_some())
        || flags.len() != 2
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id: trace_id.to_string(),
        parent_id: parent_id.to_string(),
        sampled: flags & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_values() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let s = "00f067aa0ba902b7";
        let ok = |sampled| {
            Some(TraceParent {
                trace_id: t.into(),
                parent_id: s.into(),
                sampled,
            })
        };
        let cases = [
            (format!("00-{t}-{s}-01"), ok(true)),
            (format!("00-{t}-{s}-00"), ok(false)),
            (format!(" 00-{t}-{s}-01\n"), ok(true)),
            (format!("01-{t}-{s}-03-future"), ok(true)),
            (format!("00-{t}-{s}-01-extra"), None),
            (format!("ff-{t}-{s}-01"), None),
            (format!("0-{t}-{s}-01"), None),
            (format!("00-{}-{s}-01", "0".repeat(32)), None),
            (format!("00-{t}-{}-01", "0".repeat(16)), None),
            (format!("00-{}-{s}-01", t.to_uppercase()), None),
            (format!("00-{}-{s}-01", &t[1..]), None),
            (format!("00-{t}-{s}-1"), None),
            (format!("00-{t}-{s}-zz"), None),
            (format!("00-{t}-{s}"), None),
            (String::new(), None),
            ("garbage".into(), None),
        ];
        for (v, want) in cases {
            assert_eq!(parse(&v), want, "{v:?}");
        }
    }
}
