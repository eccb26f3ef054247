//! A tonic codec for pre-encoded requests: the request is encoded once by prost, and every call
//! copies those bytes into the frame; answers are skipped unread (only the status counts).

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Sends `Bytes` as they are; decodes every answer to `()`.
#[derive(Clone, Copy, Debug)]
pub struct RawCodec {
    buffer: BufferSettings,
}

impl RawCodec {
    /// A codec whose frame buffer fits one `payload_len`-byte message (no 8 KiB default).
    pub fn for_payload(payload_len: usize) -> Self {
        let size = (payload_len + tonic::codec::HEADER_SIZE)
            .next_power_of_two()
            .max(64);
        RawCodec {
            buffer: BufferSettings::new(size, size),
        }
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = Skip;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder {
            buffer: self.buffer,
        }
    }

    fn decoder(&mut self) -> Skip {
        Skip
    }
}

#[derive(Debug)]
pub struct RawEncoder {
    buffer: BufferSettings,
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.buffer
    }
}

/// Discards the answer's bytes.
#[derive(Debug)]
pub struct Skip;

impl Decoder for Skip {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
