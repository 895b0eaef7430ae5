//! The protobuf codec of every service limitsd serves: prost, as tonic's
//! own, but a request that does not decode is `INVALID_ARGUMENT` naming the
//! field (with `google.rpc.BadRequest` details), not `INTERNAL`: an id that
//! is not UTF-8 is the caller's mistake, not the server's.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};

/// Used by the generated services and clients (see `build.rs`).
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
    }
}

/// Decodes one message, mapping a decode error onto its field.
#[derive(Debug)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| invalid_message(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status a request that does not decode is answered with (for the
/// fuzz harness, which checks it on its own).
#[doc(hidden)]
pub fn decode_error_status(e: &prost::DecodeError) -> Status {
    invalid_message(e)
}

/// prost describes a decode error as `failed to decode Protobuf message:
/// Inner.field: Outer.field: what went wrong`, innermost first; the field
/// path, outermost first, is `field.field`.
fn invalid_message(e: &prost::DecodeError) -> Status {
    let text = e.to_string();
    let rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields = Vec::new();
    let mut reason = rest;
    while let Some((head, tail)) = reason.split_once(": ") {
        match head.rsplit_once('.') {
            Some((message, field))
                if !message.is_empty()
                    && !field.is_empty()
                    && head
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') =>
            {
                fields.push(field);
                reason = tail;
            }
            _ => break,
        }
    }
    fields.reverse();
    let field = if fields.is_empty() {
        "request".to_owned()
    } else {
        fields.join(".")
    };
    crate::api::convert::invalid(&field, format!("the request does not decode: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn a_string_that_is_not_utf8_names_its_field() {
        // CheckLimitsRequest { subjects: [Subject { dimension: 1, id: 0xff }] }
        let subject = [0x08, 0x01, 0x12, 0x01, 0xff];
        let mut bytes = vec![0x0a, subject.len() as u8];
        bytes.extend_from_slice(&subject);
        let e = pb::CheckLimitsRequest::decode(bytes.as_slice()).unwrap_err();
        let status = invalid_message(&e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("subjects.id: "),
            "{}",
            status.message()
        );
        let garbage = [0xff, 0xff, 0xff];
        let e = pb::CheckLimitsRequest::decode(garbage.as_slice()).unwrap_err();
        let status = invalid_message(&e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
