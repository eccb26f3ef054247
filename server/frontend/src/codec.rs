//! A prost codec whose decode errors are INVALID_ARGUMENT (tonic's own says INTERNAL):
//! a request whose bytes are not a valid message is the client's fault.
use bytes::Buf;

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

#[derive(Debug, Clone, Copy)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = StrictEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        StrictEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct StrictEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for StrictEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let name = std::any::type_name::<U>()
            .rsplit("::")
            .next()
            .unwrap_or("message");
        match U::decode(buf.copy_to_bytes(buf.remaining())) {
            Ok(message) => Ok(Some(message)),
            Err(e) => {
                let message = format!("request is not a valid inference.{name} message: {e}");
                // A decode error desynchronises tonic's stream reader (it keeps waiting for
                // the failed message's body), so an inference request is passed on marked
                // instead: a stream then answers it with an error and reads on.
                match poisoned(&message) {
                    Some(marked) => Ok(Some(marked)),
                    None => Err(Status::invalid_argument(message)),
                }
            }
        }
    }
}

/// The parameter that marks an inference request whose bytes did not decode.
pub const UNDECODABLE: &str = "\u{0}kairos:undecodable";

fn poisoned<U: Message + Default>(message: &str) -> Option<U> {
    if !std::any::type_name::<U>().ends_with("::ModelInferRequest") {
        return None;
    }
    let mut request = crate::pb::ModelInferRequest::default();
    let mark = crate::pb::InferParameter {
        parameter_choice: Some(crate::pb::infer_parameter::ParameterChoice::StringParam(
            message.to_string(),
        )),
    };
    request.parameters.insert(UNDECODABLE.to_string(), mark);
    U::decode(request.encode_to_vec().as_slice()).ok()
}

/// The decode error of a request the codec marked as undecodable.
pub fn undecodable(request: &crate::pb::ModelInferRequest) -> Option<String> {
    match &request.parameters.get(UNDECODABLE)?.parameter_choice {
        Some(crate::pb::infer_parameter::ParameterChoice::StringParam(m)) => Some(m.clone()),
        _ => None,
    }
}
