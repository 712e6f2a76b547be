//! DNS messages between a workload, the proxy and the server: checked and read with
//! hickory-proto, never parsed by hand. Pure functions over bytes, so that the fuzz target
//! drives exactly what the proxy runs.

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType, OpCode},
    rr::{Name, RData, RecordType},
};

/// Longest chain of aliases followed from the name asked for.
const MAX_CHAIN: usize = 16;

/// Why a message was dropped. The proxy counts each kind; none opens anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a DNS message.
    #[error("not a DNS message ({0} bytes): {1}")]
    Malformed(usize, String),
    /// A response where a query was expected, or the reverse.
    #[error("a {0} where a {1} was expected")]
    Direction(&'static str, &'static str),
    /// Another operation than a standard query.
    #[error("operation {0} is not a standard query")]
    NotQuery(String),
    /// Not exactly one question.
    #[error("{0} questions; a query asks one")]
    Questions(usize),
    /// An answer whose id or question is not the query's: forged, or for another query.
    #[error("answer does not match the query: {0}")]
    Mismatch(&'static str),
}

/// A workload's query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The message id.
    pub id: u16,
    /// The name asked for as the message carries it.
    pub qname: Name,
    /// The record type asked for.
    pub qtype: RecordType,
    /// The name asked for as rules compare names; `None` when it is not a host name the rules
    /// language can write (it then matches no rule).
    pub name: Option<String>,
}

/// What an answer tells about names, checked against its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name asked for and the names its aliases (CNAME) led to, in order, as rules compare
    /// names.
    pub names: Vec<String>,
    /// The addresses the last name of the chain has, each with the time it may be kept: the
    /// smallest TTL along the chain.
    pub addrs: Vec<(IpAddr, u32)>,
    /// The server cut the answer short (the client asks again over TCP).
    pub truncated: bool,
}

fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
    Message::from_vec(bytes).map_err(|e| MessageError::Malformed(bytes.len(), e.to_string()))
}

/// A name as rules compare it, if it is one.
pub fn rule_name(n: &Name) -> Option<String> {
    policy::names::normalize(&n.to_ascii()).ok()
}

/// Reads a workload's query: a standard query with exactly one question.
pub fn read_query(bytes: &[u8]) -> Result<Query, MessageError> {
    let m = decode(bytes)?;
    if m.message_type() != MessageType::Query {
        return Err(MessageError::Direction("response", "query"));
    }
    if m.op_code() != OpCode::Query {
        return Err(MessageError::NotQuery(format!("{:?}", m.op_code())));
    }
    let [q] = m.queries() else {
        return Err(MessageError::Questions(m.queries().len()));
    };
    Ok(Query {
        id: m.id(),
        qname: q.name().clone(),
        qtype: q.query_type(),
        name: rule_name(q.name()),
    })
}

/// Reads the server's answer to `query`: same id, a response, the same single question (names
/// compared without regard to case). The chain of aliases is followed from the name asked
/// for, and the addresses are those of its last name.
pub fn read_answer(query: &Query, bytes: &[u8]) -> Result<Answer, MessageError> {
    let m = decode(bytes)?;
    if m.message_type() != MessageType::Response {
        return Err(MessageError::Direction("query", "response"));
    }
    if m.id() != query.id {
        return Err(MessageError::Mismatch("another id"));
    }
    let [q] = m.queries() else {
        return Err(MessageError::Mismatch("not the one question asked"));
    };
    if q.query_type() != query.qtype || !same_name(q.name(), &query.qname) {
        return Err(MessageError::Mismatch("another question"));
    }
    let mut names = Vec::new();
    names.extend(query.name.clone());
    let mut current = query.qname.clone();
    let mut chain: Vec<Name> = Vec::new();
    let mut ttl = u32::MAX;
    for _ in 0..MAX_CHAIN {
        let next = m.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(c) if same_name(r.name(), &current) => Some((c.0.clone(), r.ttl())),
            _ => None,
        });
        let Some((target, t)) = next else { break };
        if same_name(&target, &query.qname) || chain.iter().any(|n| same_name(n, &target)) {
            // A loop: nothing more to learn from it.
            break;
        }
        ttl = ttl.min(t);
        names.extend(rule_name(&target));
        chain.push(target.clone());
        current = target;
    }
    let addrs = m
        .answers()
        .iter()
        .filter(|r| same_name(r.name(), &current))
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), ttl.min(r.ttl()))),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), ttl.min(r.ttl()))),
            _ => None,
        })
        .collect();
    Ok(Answer {
        names,
        addrs,
        truncated: m.truncated(),
    })
}

fn same_name(a: &Name, b: &Name) -> bool {
    a.to_ascii()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(b.to_ascii().trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{Message, Query as Q},
        rr::{
            rdata::{A, AAAA, CNAME},
            Record,
        },
    };
    use std::str::FromStr;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query);
        m.add_query(Q::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn answer(id: u16, qname: &str, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query);
        m.add_query(Q::query(Name::from_str(qname).unwrap(), RecordType::A));
        m.add_answers(records);
        m.to_vec().unwrap()
    }

    fn a(name: &str, ip: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::A(A(ip.parse().unwrap())),
        )
    }

    fn cname(name: &str, to: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::CNAME(CNAME(Name::from_str(to).unwrap())),
        )
    }

    #[test]
    fn a_query_and_its_answer_through_a_chain_of_aliases() {
        let q = read_query(&query("Alias.Test.", RecordType::A)).unwrap();
        assert_eq!(q.name.as_deref(), Some("alias.test"));
        let bytes = answer(
            4242,
            "alias.test.",
            vec![
                cname("alias.test.", "mid.test.", 300),
                cname("mid.test.", "db.internal.test.", 60),
                a("db.internal.test.", "10.0.0.7", 120),
                a("db.internal.test.", "10.0.0.8", 30),
                // Not on the chain: never learned.
                a("other.test.", "10.9.9.9", 300),
            ],
        );
        let ans = read_answer(&q, &bytes).unwrap();
        assert_eq!(ans.names, ["alias.test", "mid.test", "db.internal.test"]);
        assert_eq!(
            ans.addrs,
            [
                ("10.0.0.7".parse().unwrap(), 60),
                ("10.0.0.8".parse().unwrap(), 30)
            ]
        );
        assert!(!ans.truncated);
    }

    #[test]
    fn ipv6_answers_and_a_loop_of_aliases_end() {
        let q = read_query(&query("v6.test.", RecordType::AAAA)).unwrap();
        let mut m = Message::new();
        m.set_id(4242).set_message_type(MessageType::Response);
        m.add_query(Q::query(
            Name::from_str("v6.test.").unwrap(),
            RecordType::AAAA,
        ));
        m.add_answer(Record::from_rdata(
            Name::from_str("v6.test.").unwrap(),
            10,
            RData::AAAA(AAAA("fd00::7".parse().unwrap())),
        ));
        let ans = read_answer(&q, &m.to_vec().unwrap()).unwrap();
        assert_eq!(ans.addrs, [("fd00::7".parse().unwrap(), 10)]);

        let q = read_query(&query("loop.test.", RecordType::A)).unwrap();
        let bytes = answer(
            4242,
            "loop.test.",
            vec![
                cname("loop.test.", "back.test.", 5),
                cname("back.test.", "loop.test.", 5),
            ],
        );
        let ans = read_answer(&q, &bytes).unwrap();
        assert!(ans.addrs.is_empty());
        assert_eq!(ans.names, ["loop.test", "back.test"]);
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let q = read_query(&query("db.test.", RecordType::A)).unwrap();
        let cases: Vec<(Result<Answer, MessageError>, &str)> = vec![
            (read_answer(&q, b"\x00\x01garbage"), "not a DNS message"),
            (
                read_answer(
                    &q,
                    &answer(1, "db.test.", vec![a("db.test.", "10.0.0.1", 5)]),
                ),
                "another id",
            ),
            (
                read_answer(
                    &q,
                    &answer(4242, "evil.test.", vec![a("evil.test.", "10.0.0.1", 5)]),
                ),
                "another question",
            ),
            (
                read_answer(&q, &query("db.test.", RecordType::A)),
                "a query where a response",
            ),
        ];
        for (got, want) in cases {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
        let e = read_query(&answer(1, "db.test.", vec![]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a response where a query"), "{e}");
        let mut none = Message::new();
        none.set_message_type(MessageType::Query);
        let e = read_query(&none.to_vec().unwrap()).unwrap_err().to_string();
        assert!(e.contains("0 questions"), "{e}");
    }

    #[test]
    fn a_name_outside_the_rules_language_matches_nothing_but_is_answered() {
        let q = read_query(&query("_svc._tcp.example.com.", RecordType::SRV)).unwrap();
        assert_eq!(q.name.as_deref(), Some("_svc._tcp.example.com"));
        let q = read_query(&query("1.0.0.10.in-addr.arpa.", RecordType::PTR)).unwrap();
        assert_eq!(q.name.as_deref(), Some("1.0.0.10.in-addr.arpa"));
    }
}
