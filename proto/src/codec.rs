//! The codec of both services, server and client side: prost's encoding, with a small first
//! buffer per call.
//!
//! tonic gives every call, and so every agent's subscription stream for as long as it stays
//! open, an 8 KiB buffer to encode into and another to decode from. A central holding 10,000
//! agent streams kept 80 MiB of such buffers for messages of a few hundred bytes. A buffer here
//! starts at [`FIRST_BUFFER`] and grows for the message that needs more (a rules push, a long
//! list): a stream then holds what its largest message needed.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Room for a decision, a revocation or a reply to a unary call without growing.
pub const FIRST_BUFFER: usize = 512;

/// Encoded messages up to this size are sent together (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with a [`FIRST_BUFFER`]-byte first buffer.
#[derive(Debug, Clone)]
pub struct LatchCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LatchCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for LatchCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
