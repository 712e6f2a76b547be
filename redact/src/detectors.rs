//! The built-in detectors: one pattern, the capture groups that hold the value to mask, a
//! validator, and a priority that decides between overlapping findings.

use crate::{checks, FindingKind};

pub(crate) struct BuiltinSpec {
    pub kind: FindingKind,
    /// Higher wins when findings overlap; between equals, the longer one wins.
    pub priority: u8,
    pub pattern: &'static str,
    /// Capture groups holding the value to mask; the first that took part in the match is
    /// masked. Empty: the whole match.
    pub groups: &'static [&'static str],
    pub check: checks::Check,
    /// IP addresses are masked only when the configuration asks for it.
    pub ip_address: bool,
}

pub(crate) const PRIORITY_EXTRA: u8 = 90;

pub(crate) fn builtin() -> Vec<BuiltinSpec> {
    use FindingKind as K;
    let spec = |kind, priority, pattern, groups, check| BuiltinSpec {
        kind,
        priority,
        pattern,
        groups,
        check,
        ip_address: false,
    };
    vec![
        // A GCP service-account key file: the PEM key inside its JSON.
        spec(
            K::GcpKey,
            101,
            r#""private_key"[ \t]*:[ \t]*"(?P<v>-----BEGIN[^"]*)""#,
            &["v"],
            checks::accept,
        ),
        // PEM private key blocks; a block cut off before its END line is masked to the end.
        spec(
            K::PrivateKey,
            100,
            r"(?s)-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?:.*?-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|.*)",
            &[],
            checks::accept,
        ),
        spec(
            K::Jwt,
            85,
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            &[],
            checks::jwt,
        ),
        spec(
            K::AwsAccessKey,
            80,
            r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
            &[],
            checks::accept,
        ),
        spec(
            K::AwsSecret,
            80,
            r#"(?i)aws_?secret_?(?:access_?)?key["']?[ \t]*[:=][ \t]*["']?(?P<v>[A-Za-z0-9/+=]{40})"#,
            &["v"],
            checks::aws_secret,
        ),
        spec(
            K::GcpKey,
            80,
            r#""private_key_id"[ \t]*:[ \t]*"(?P<v>[0-9a-f]{40})""#,
            &["v"],
            checks::accept,
        ),
        spec(
            K::GcpKey,
            80,
            r"(?-u:\b)AIza[0-9A-Za-z_-]{35}",
            &[],
            checks::token_end,
        ),
        spec(
            K::AzureKey,
            80,
            r"(?i)(?:(?-u:\b)(?:AccountKey|SharedAccessKey)[ \t]*=[ \t]*(?P<v>[A-Za-z0-9+/]{20,}={0,2})|[?&]sig=(?P<s>[A-Za-z0-9%+/=]{20,}))",
            &["v", "s"],
            checks::accept,
        ),
        spec(
            K::GithubToken,
            80,
            r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
            &[],
            checks::accept,
        ),
        spec(
            K::SlackToken,
            80,
            r"(?-u:\b)xox[abprs]-[A-Za-z0-9-]{10,250}|hooks\.slack\.com/services/(?P<v>[A-Za-z0-9_/]{10,})",
            &["v"],
            checks::token_end,
        ),
        spec(
            K::AiApiKey,
            80,
            r"(?-u:\b)(?:sk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,})",
            &[],
            checks::ai_key,
        ),
        spec(
            K::Bearer,
            70,
            r#"(?i:(?-u:\b)authorization["']?[ \t]*[:=][ \t]*["']?bearer[ \t]+(?P<v>[A-Za-z0-9._~+/-]+=*))|(?-u:\b)[Bb]earer[ \t]+(?P<w>[A-Za-z0-9._~+/-]{20,}=*)"#,
            &["v", "w"],
            checks::accept,
        ),
        // Other schemes of the Authorization header (Basic, token) carry a secret as well.
        spec(
            K::Secret,
            70,
            r#"(?i)(?-u:\b)authorization["']?[ \t]*[:=][ \t]*["']?(?:basic|token|digest)[ \t]+(?P<v>[A-Za-z0-9._~+/-]+=*)"#,
            &["v"],
            checks::accept,
        ),
        spec(
            K::UrlCredentials,
            60,
            r"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]*://(?P<v>[^\s/?#@:]+:[^\s/?#@]+)@",
            &["v"],
            checks::accept,
        ),
        // `password=...`, `DB_PASSWORD: ...`, `"api_key": "..."`: keep the key, mask the value.
        spec(
            K::Secret,
            50,
            r#"(?i)(?-u:\b)(?:[A-Za-z0-9_.-]*(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|mysql_pwd)|(?:[A-Za-z0-9]+[_.-])*pass|(?:[A-Za-z0-9]+[_.-])+pwd)["']?[ \t]*[:=][ \t]*(?:"(?P<dq>(?:[^"\\\n]|\\.)+)"|'(?P<sq>[^'\n]+)'|(?P<bare>[^\s&;"'`]+))"#,
            &["dq", "sq", "bare"],
            checks::secret_value,
        ),
        spec(
            K::Card,
            40,
            r"[0-9]{4}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]{4}(?:[ -][0-9]{3})?|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5}|[0-9]{13,19}",
            &[],
            checks::card,
        ),
        spec(
            K::Iban,
            40,
            r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}",
            &[],
            checks::iban,
        ),
        spec(K::Ssn, 40, r"[0-9]{3}-[0-9]{2}-[0-9]{4}", &[], checks::ssn),
        spec(
            K::Email,
            30,
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}",
            &[],
            checks::email,
        ),
        spec(
            K::Phone,
            20,
            r"\+[1-9][0-9]{0,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6}|(?:1[ .-]?)?\([2-9][0-9]{2}\)[ .-]?[0-9]{3}[ .-][0-9]{4}|(?:1-)?[2-9][0-9]{2}-[0-9]{3}-[0-9]{4}|[2-9][0-9]{2}\.[0-9]{3}\.[0-9]{4}|0[1-9][0-9]{0,3} [0-9]{3,4} [0-9]{3,4}|0[1-9](?: [0-9]{2}){4}|0[1-9](?:\.[0-9]{2}){4}",
            &[],
            checks::phone,
        ),
        BuiltinSpec {
            ip_address: true,
            ..spec(
                K::IpAddress,
                10,
                r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}",
                &[],
                checks::ipv4,
            )
        },
        BuiltinSpec {
            ip_address: true,
            ..spec(
                K::IpAddress,
                10,
                r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}",
                &[],
                checks::ipv6,
            )
        },
    ]
}
