//! The gRPC codec of every herald service: prost encoding, and a decoder that answers a message
//! whose string field is not UTF-8 with `INVALID_ARGUMENT` naming the field by its path in the
//! request (`messages[3].content.sms.text`, `recipient.attributes["plan"]`), the way request
//! validation names fields. `tonic_prost::ProstCodec` answers `INTERNAL` with prost's message
//! instead, which blames the server for the client's bad input.
//!
//! Other decode errors (truncated or malformed protobuf) keep `ProstCodec`'s `INTERNAL`. The
//! field path comes from walking the rejected bytes with the message's descriptor (from
//! [`crate::FILE_DESCRIPTOR_SET`]), only after prost rejected them: the happy path is
//! `ProstCodec`'s. Generated clients use this codec too; a herald server never sends invalid
//! UTF-8 (its strings are Rust `String`s), so on a client the mapping only fires for a foreign
//! peer.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::LazyLock;

use prost::bytes::Buf;
use prost::{DecodeError, Message, Name};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::error::Error;

/// Nesting deeper than this is not walked (prost's own recursion limit).
const MAX_DEPTH: u32 = 100;

/// `tonic_prost::ProstCodec` with [`HeraldDecoder`] for decoding. The generated services and
/// clients use it (`codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct HeraldCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for HeraldCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for HeraldCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = HeraldDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        HeraldDecoder { _pd: PhantomData }
    }
}

/// Decodes `U` with prost; a string field that is not UTF-8 is `INVALID_ARGUMENT` naming it.
#[derive(Debug, Clone)]
pub struct HeraldDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U> Decoder for HeraldDecoder<U>
where
    U: Message + Name + Default,
{
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Zero-copy: the buffer is one contiguous `BytesMut`; the bytes are kept only to name
        // the field when prost rejects them.
        let bytes = buf.copy_to_bytes(buf.remaining());
        U::decode(&bytes[..])
            .map(Some)
            .map_err(|error| decode_status(&U::full_name(), &bytes, &error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status for `bytes` that prost could not decode as the message `message` (full name).
fn decode_status(message: &str, bytes: &[u8], error: &DecodeError) -> Status {
    let found = SCHEMA
        .as_ref()
        .and_then(|schema| schema.invalid_utf8(message, bytes, 0))
        .or_else(|| prost_utf8_field(error).map(|path| (path, UTF8_REASON.to_owned())));
    match found {
        Some((field, reason)) => Error::invalid(field, reason).into_status(),
        // As `tonic_prost::ProstCodec` does.
        None => Status::internal(error.to_string()),
    }
}

const UTF8_REASON: &str = "is not valid UTF-8";

/// Every message of [`crate::FILE_DESCRIPTOR_SET`] by full name (`herald.v1.SendRequest`);
/// `None` only if the embedded set does not decode (then prost's own field path is used).
static SCHEMA: LazyLock<Option<Schema>> = LazyLock::new(|| {
    let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).ok()?;
    let mut messages = HashMap::new();
    for file in set.file {
        let package = file.package().to_owned();
        for message in file.message_type {
            Schema::add(&mut messages, &package, message);
        }
    }
    Some(Schema { messages })
});

struct Schema {
    messages: HashMap<String, DescriptorProto>,
}

impl Schema {
    fn add(messages: &mut HashMap<String, DescriptorProto>, scope: &str, message: DescriptorProto) {
        let name = if scope.is_empty() {
            message.name().to_owned()
        } else {
            format!("{scope}.{}", message.name())
        };
        for nested in &message.nested_type {
            Self::add(messages, &name, nested.clone());
        }
        messages.insert(name, message);
    }

    /// The path (relative to `message`) and reason of the first string field in `bytes` that
    /// is not UTF-8; `None` when there is none or the bytes are not well-formed.
    fn invalid_utf8(
        &self,
        message: &str,
        mut bytes: &[u8],
        depth: u32,
    ) -> Option<(String, String)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let descriptor = self.messages.get(message)?;
        // Occurrences so far of each field number: the index of an element of a repeated field.
        let mut seen: HashMap<i32, usize> = HashMap::new();
        while !bytes.is_empty() {
            let key = read_varint(&mut bytes)?;
            match key & 0b111 {
                0 => {
                    read_varint(&mut bytes)?;
                    continue;
                }
                1 => {
                    bytes = bytes.get(8..)?;
                    continue;
                }
                5 => {
                    bytes = bytes.get(4..)?;
                    continue;
                }
                2 => {}
                // Groups (proto2 only) or an invalid wire type: not walked.
                _ => return None,
            }
            let len = usize::try_from(read_varint(&mut bytes)?).ok()?;
            let payload = bytes.get(..len)?;
            bytes = bytes.get(len..)?;
            let number = i32::try_from(key >> 3).ok()?;
            let Some(field) = descriptor.field.iter().find(|f| f.number() == number) else {
                continue;
            };
            let occurrence = seen.entry(number).or_default();
            let index = *occurrence;
            *occurrence += 1;
            let segment = if field.label() == Label::Repeated {
                format!("{}[{index}]", field.name())
            } else {
                field.name().to_owned()
            };
            match field.r#type() {
                Type::String if std::str::from_utf8(payload).is_err() => {
                    return Some((segment, UTF8_REASON.to_owned()));
                }
                Type::Message => {
                    let child = field.type_name().trim_start_matches('.');
                    let is_map = self
                        .messages
                        .get(child)
                        .and_then(|d| d.options.as_ref())
                        .is_some_and(|o| o.map_entry());
                    let Some((inner, reason)) = self.invalid_utf8(child, payload, depth + 1) else {
                        continue;
                    };
                    if !is_map {
                        return Some((format!("{segment}.{inner}"), reason));
                    }
                    // A map entry: name the entry by its key, not by its position.
                    let name = field.name();
                    if inner == "key" {
                        return Some((name.to_owned(), "has a key that is not valid UTF-8".into()));
                    }
                    let key = map_key(payload);
                    let rest = inner.strip_prefix("value").unwrap_or(&inner);
                    return Some((format!("{name}[{key}]{rest}"), reason));
                }
                _ => {}
            }
        }
        None
    }
}

/// The key of an encoded map entry, for a field path: a string key quoted, a number as is.
fn map_key(mut entry: &[u8]) -> String {
    let mut key = String::from("\"\"");
    while let Some(tag) = read_varint(&mut entry) {
        let Some(value) = read_varint(&mut entry) else {
            break;
        };
        match tag {
            // Field 1, length-delimited: a string key.
            0x0a => {
                let Some(bytes) = usize::try_from(value).ok().and_then(|n| entry.get(..n)) else {
                    break;
                };
                key = format!("{:?}", String::from_utf8_lossy(bytes));
                entry = &entry[bytes.len()..];
            }
            // Field 1, varint: an integer or bool key.
            0x08 => key = value.to_string(),
            // The value (field 2) or anything else.
            _ => match tag & 0b111 {
                2 => match usize::try_from(value).ok().and_then(|n| entry.get(n..)) {
                    Some(rest) => entry = rest,
                    None => break,
                },
                0 => {}
                // A fixed-width key or value: not worth naming.
                _ => break,
            },
        }
    }
    key
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The field path prost reports for invalid UTF-8, as request field names (`message.recipient_id`
/// for `MessageRequest.recipient_id: SendRequest.message: invalid string value: ...`), when the
/// descriptor walk found nothing.
fn prost_utf8_field(error: &DecodeError) -> Option<String> {
    let text = error.to_string();
    if !text.contains("not UTF-8") {
        return None;
    }
    let mut rest = text.strip_prefix("failed to decode Protobuf message: ")?;
    // The stack is innermost first: `Msg.field: Outer.field: ...: description`.
    let mut fields = Vec::new();
    while let Some((entry, tail)) = rest.split_once(": ") {
        let Some((message, field)) = entry.split_once('.') else {
            break;
        };
        let field = field.trim_start_matches("r#");
        if !is_ident(message) || !is_ident(field) {
            break;
        }
        fields.push(field);
        rest = tail;
    }
    if fields.is_empty() {
        return None;
    }
    fields.reverse();
    Some(fields.join("."))
}

fn is_ident(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{
        Content, MessageRequest, Recipient, SendBatchRequest, SendRequest, SmsContent,
        UpsertRecipientRequest,
    };

    const MARK: &str = "@@@@";
    const BAD: [u8; 4] = [0xff, 0xfe, 0xfd, 0xfc];

    /// `message` encoded, with the (one) `MARK` replaced by bytes that are not UTF-8.
    fn corrupt(message: &impl Message) -> Vec<u8> {
        let mut bytes = message.encode_to_vec();
        let at = bytes
            .windows(MARK.len())
            .position(|w| w == MARK.as_bytes())
            .expect("the mark is encoded");
        bytes[at..at + MARK.len()].copy_from_slice(&BAD);
        bytes
    }

    fn status_of<U: Message + Name + Default + std::fmt::Debug>(bytes: &[u8]) -> Status {
        let error = U::decode(bytes).expect_err("prost rejects invalid UTF-8");
        decode_status(&U::full_name(), bytes, &error)
    }

    #[test]
    fn names_a_top_level_nested_repeated_and_map_field() {
        let send = SendRequest {
            message: Some(MessageRequest {
                recipient_id: MARK.into(),
                ..Default::default()
            }),
        };
        let status = status_of::<SendRequest>(&corrupt(&send));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid message.recipient_id: is not valid UTF-8"
        );

        let sms = |text: &str| MessageRequest {
            content: Some(Content {
                sms: Some(SmsContent { text: text.into() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let batch = SendBatchRequest {
            messages: vec![sms("a"), sms("b"), sms("c"), sms(MARK)],
        };
        let status = status_of::<SendBatchRequest>(&corrupt(&batch));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid messages[3].content.sms.text: is not valid UTF-8"
        );

        let upsert = UpsertRecipientRequest {
            recipient: Some(Recipient {
                id: "r".into(),
                attributes: [("plan".to_owned(), MARK.to_owned())].into(),
                ..Default::default()
            }),
        };
        let status = status_of::<UpsertRecipientRequest>(&corrupt(&upsert));
        assert_eq!(
            status.message(),
            "invalid recipient.attributes[\"plan\"]: is not valid UTF-8"
        );
        let upsert = UpsertRecipientRequest {
            recipient: Some(Recipient {
                attributes: [(MARK.to_owned(), "x".to_owned())].into(),
                ..Default::default()
            }),
        };
        let status = status_of::<UpsertRecipientRequest>(&corrupt(&upsert));
        assert_eq!(
            status.message(),
            "invalid recipient.attributes: has a key that is not valid UTF-8"
        );
    }

    #[test]
    fn other_decode_errors_stay_internal() {
        let mut bytes = SendRequest {
            message: Some(MessageRequest {
                recipient_id: "r-1".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        bytes.pop();
        let status = status_of::<SendRequest>(&bytes);
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    }

    #[test]
    fn falls_back_to_the_path_prost_reports() {
        let bytes = corrupt(&SendRequest {
            message: Some(MessageRequest {
                recipient_id: MARK.into(),
                ..Default::default()
            }),
        });
        let error = SendRequest::decode(&bytes[..]).expect_err("invalid UTF-8");
        assert_eq!(
            prost_utf8_field(&error).as_deref(),
            Some("message.recipient_id")
        );
        // A message the schema does not know: prost's path.
        let status = decode_status("no.such.Message", &bytes, &error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid message.recipient_id: is not valid UTF-8"
        );
    }
}
