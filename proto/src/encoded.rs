//! A message encoded once, for a server that sends the same message on many streams.
//!
//! A rules push goes to every agent stream a rules version selects: as a message, each of
//! 10,000 streams cloned it and encoded it again. [`Encoded`] holds the encoding, made once and
//! shared: a stream writes its bytes as they are. The agent service's server sends its stream
//! messages as [`EncodedAgentMessage`] (`build.rs` gives its `Subscribe` this type, server side
//! only); clients receive a plain [`crate::v1::AgentMessage`], as the bytes on the wire are the
//! same.

use std::{marker::PhantomData, sync::Arc};

use prost::{
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType},
    DecodeError, Message,
};

/// The encoding of an `M`, shared by every clone.
///
/// A thin pointer, so that the queue slots every agent stream has allocated, waiting or not,
/// stay small.
pub struct Encoded<M> {
    bytes: Arc<Vec<u8>>,
    kind: PhantomData<fn() -> M>,
}

/// How the agent service's server sends an [`crate::v1::AgentMessage`].
pub type EncodedAgentMessage = Encoded<crate::v1::AgentMessage>;

impl<M: Message> Encoded<M> {
    /// Encodes `message`.
    pub fn new(message: &M) -> Self {
        Encoded {
            bytes: Arc::new(message.encode_to_vec()),
            kind: PhantomData,
        }
    }
}

impl<M> Encoded<M> {
    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<M: Message + Default> Encoded<M> {
    /// The message again.
    pub fn message(&self) -> Result<M, DecodeError> {
        M::decode(self.bytes.as_slice())
    }
}

impl<M> Clone for Encoded<M> {
    fn clone(&self) -> Self {
        Encoded {
            bytes: self.bytes.clone(),
            kind: PhantomData,
        }
    }
}

impl<M> Default for Encoded<M> {
    fn default() -> Self {
        Encoded {
            bytes: Arc::default(),
            kind: PhantomData,
        }
    }
}

impl<M: Message + Default + std::fmt::Debug> std::fmt::Debug for Encoded<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.message() {
            Ok(m) => std::fmt::Debug::fmt(&m, f),
            Err(e) => write!(f, "Encoded({} bytes, {e})", self.bytes.len()),
        }
    }
}

impl<M: Message + Default> Message for Encoded<M> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    /// Decoding is for completeness (a server only sends these, and nothing decodes one from
    /// outside): each field is merged into the message decoded so far, which is encoded again,
    /// a cost that grows with the square of the fields.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut m = self.message()?;
        m.merge_field(tag, wire_type, buf, ctx)?;
        *self = Encoded::new(&m);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        *self = Encoded::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::{Encoded, EncodedAgentMessage};
    use crate::v1::{agent_message::Body, AgentMessage, Decision, Revocation, RuleSetPush};

    fn messages() -> Vec<AgentMessage> {
        vec![
            AgentMessage::default(),
            AgentMessage {
                body: Some(Body::Decision(Decision {
                    approval_id: "ap-1".into(),
                    reason: "looks fine".into(),
                    ..Default::default()
                })),
            },
            AgentMessage {
                body: Some(Body::Revocation(Revocation {
                    grant_id: "gr-1".into(),
                    close_connections: true,
                    ..Default::default()
                })),
            },
            AgentMessage {
                body: Some(Body::Rules(RuleSetPush {
                    version: 7,
                    sha256: "ab".repeat(32),
                    yaml: "rules: []\n".repeat(5_000),
                    ..Default::default()
                })),
            },
        ]
    }

    #[test]
    fn the_wire_carries_the_message_itself() {
        for m in messages() {
            let e = EncodedAgentMessage::new(&m);
            // Raw, as tonic's codec writes it into a frame; and length-delimited.
            assert_eq!(e.encode_to_vec(), m.encode_to_vec());
            assert_eq!(e.encoded_len(), m.encoded_len());
            assert_eq!(
                e.encode_length_delimited_to_vec(),
                m.encode_length_delimited_to_vec()
            );
            // What a client decodes.
            assert_eq!(AgentMessage::decode(e.encode_to_vec().as_slice()), Ok(m));
        }
    }

    #[test]
    fn clones_share_one_encoding() {
        let m = &messages()[3];
        let e = EncodedAgentMessage::new(m);
        let c = e.clone();
        assert!(std::ptr::eq(e.as_bytes(), c.as_bytes()));
    }

    #[test]
    fn decoding_gives_the_same_message() {
        for m in messages() {
            let bytes = m.encode_to_vec();
            let e = EncodedAgentMessage::decode(bytes.as_slice()).expect("decode");
            assert_eq!(e.message(), Ok(m));
            assert_eq!(e.as_bytes(), bytes.as_slice());
        }
        assert!(EncodedAgentMessage::decode(&[0x0a, 0x05, 0x01][..]).is_err());
        let mut e = Encoded::new(&messages()[1]);
        e.clear();
        assert!(e.as_bytes().is_empty());
    }
}
