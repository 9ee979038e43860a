//! Edges of the public gRPC surface of a node, black-box against real processes (one node):
//! request bodies whose string fields are not UTF-8 (INVALID_ARGUMENT naming the field, nothing
//! stored), and what health and server reflection (v1 and v1alpha) advertise.

use std::collections::BTreeSet;
use std::time::Duration;

use herald::demo::{demo_message, demo_recipient};
use herald_proto::codec::HeraldCodec;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    BreakerStatus, GetMessageResponse, GetRecipientRequest, ReportResponse, SendBatchResponse,
    SendRequest, SendResponse, UpsertRecipientRequest, UpsertRecipientResponse,
    UpsertRecipientsResponse,
};
use herald_testkit::cluster::{self as support, API_KEY, Cluster, NodeSpec, authed};
use tonic::codec::Codec;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::FileDescriptorResponse;

/// How long one reflection reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes that are not UTF-8.
const BAD: &[u8] = &[0xff, 0xfe, 0xfd, 0xfc];

/// Every service a node's public port answers, as reflection must list them (the internal
/// `herald.v1.Forward` is on the internal port only).
const NODE_SERVICES: [&str; 10] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "herald.v1.Breakers",
    "herald.v1.Campaigns",
    "herald.v1.Credits",
    "herald.v1.Delivery",
    "herald.v1.Engagement",
    "herald.v1.Journeys",
    "herald.v1.Recipients",
];

// --- a hand-written protobuf encoder: generated messages cannot hold invalid UTF-8 -----------

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (string, bytes, message, map entry).
fn field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number) << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn fields(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A request body whose field 1 occurs once per entry of `field_1`, each holding those bytes.
/// `repeated bytes` at tag 1 encodes exactly so, which lets a prost encoder send a field 1
/// (`message`, `messages`, `recipient`, `reports`, `campaign_id`) the generated types cannot.
fn body(field_1: Vec<Vec<u8>>) -> FileDescriptorResponse {
    FileDescriptorResponse {
        file_descriptor_proto: field_1,
    }
}

/// A `MessageRequest` (recipient_id = 1, idempotency_key = 2, content = 4 with sms = 3 and
/// its text = 1, variables = 8), with `extra` fields appended.
fn message_request(recipient_id: &[u8], key: &[u8], sms_text: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let content = field(3, &field(1, sms_text));
    let mut parts = vec![field(1, recipient_id), field(2, key), field(4, &content)];
    parts.extend_from_slice(extra);
    fields(&parts)
}

/// Calls `path` on the node with a raw request body (authenticated as the test tenant).
async fn call<C>(
    channel: &Channel,
    path: &'static str,
    request: C::Encode,
    codec: C,
) -> Result<C::Decode, Status>
where
    C: Codec,
    C::Encode: Send + Sync + 'static,
    C::Decode: Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    grpc.unary(
        authed(request, API_KEY),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The call must fail with INVALID_ARGUMENT naming `field` (the path in the request).
#[track_caller]
fn expect_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = match result {
        Ok(reply) => panic!("expected INVALID_ARGUMENT naming {field}, got Ok({reply:?})"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "expected INVALID_ARGUMENT naming {field}: {status:?}"
    );
    assert_eq!(
        status.message(),
        format!("invalid {field}: is not valid UTF-8"),
        "the error must name {field}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_invalid_argument_naming_the_field() {
    let cluster = Cluster::start(1, NodeSpec::default()).await;
    let channel = support::channel(&cluster.node_addrs[0]).await;
    let mut recipients = RecipientsClient::new(channel.clone());
    let delivery = DeliveryClient::new(channel.clone());

    // A recipient, so that a valid send after the rejections is accepted.
    recipients
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(demo_recipient("utf8-ok".into(), 1)),
            },
            API_KEY,
        ))
        .await
        .expect("upsert a valid recipient");

    // Delivery/Send: a top-level string of the message, and a nested one.
    let send = "/herald.v1.Delivery/Send";
    expect_invalid(
        call(
            &channel,
            send,
            body(vec![message_request(BAD, b"utf8-key-1", b"hi", &[])]),
            HeraldCodec::<_, SendResponse>::default(),
        )
        .await,
        "message.recipient_id",
    );
    expect_invalid(
        call(
            &channel,
            send,
            body(vec![message_request(b"utf8-ok", b"utf8-key-1", BAD, &[])]),
            HeraldCodec::<_, SendResponse>::default(),
        )
        .await,
        "message.content.sms.text",
    );
    // Nothing was stored under the key: a valid send with it is new.
    let reply = delivery
        .clone()
        .send(authed(
            SendRequest {
                message: Some(demo_message("utf8-ok".into(), "utf8-key-1".into())),
            },
            API_KEY,
        ))
        .await
        .expect("a valid send after the rejections")
        .into_inner();
    assert!(
        !reply.duplicate,
        "a rejected request stored its idempotency key (message {})",
        reply.message_id
    );

    // Delivery/SendBatch: the element of a repeated field, and a map value by its key.
    let good = |key: &str| message_request(b"utf8-ok", key.as_bytes(), b"hi", &[]);
    let batch = "/herald.v1.Delivery/SendBatch";
    expect_invalid(
        call(
            &channel,
            batch,
            body(vec![
                good("utf8-b0"),
                good("utf8-b1"),
                good("utf8-b2"),
                message_request(b"utf8-ok", b"utf8-b3", BAD, &[]),
            ]),
            HeraldCodec::<_, SendBatchResponse>::default(),
        )
        .await,
        "messages[3].content.sms.text",
    );
    let variable = field(8, &fields(&[field(1, b"name"), field(2, BAD)]));
    expect_invalid(
        call(
            &channel,
            batch,
            body(vec![message_request(
                b"utf8-ok",
                b"utf8-b4",
                b"hi",
                &[variable],
            )]),
            HeraldCodec::<_, SendBatchResponse>::default(),
        )
        .await,
        "messages[0].variables[\"name\"]",
    );
    for key in ["utf8-b0", "utf8-b3", "utf8-b4"] {
        let reply = delivery
            .clone()
            .send(authed(
                SendRequest {
                    message: Some(demo_message("utf8-ok".into(), key.into())),
                },
                API_KEY,
            ))
            .await
            .unwrap_or_else(|s| panic!("valid send with key {key}: {s:?}"))
            .into_inner();
        assert!(!reply.duplicate, "rejected batch stored key {key}");
    }

    // Delivery/GetMessage: the request itself.
    expect_invalid(
        call(
            &channel,
            "/herald.v1.Delivery/GetMessage",
            body(vec![BAD.to_vec()]),
            HeraldCodec::<_, GetMessageResponse>::default(),
        )
        .await,
        "message_id",
    );

    // Recipients/UpsertRecipient (id = 1, email = 3): rejected, nothing stored.
    let recipient = fields(&[field(1, b"utf8-r1"), field(3, BAD)]);
    expect_invalid(
        call(
            &channel,
            "/herald.v1.Recipients/UpsertRecipient",
            body(vec![recipient]),
            HeraldCodec::<_, UpsertRecipientResponse>::default(),
        )
        .await,
        "recipient.email",
    );
    let missing = recipients
        .get_recipient(authed(
            GetRecipientRequest {
                id: "utf8-r1".into(),
            },
            API_KEY,
        ))
        .await
        .expect_err("the rejected recipient was stored");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Recipients/UpsertRecipients: push_tokens = 2 with token = 1, in the second recipient.
    let token = field(2, &field(1, BAD));
    expect_invalid(
        call(
            &channel,
            "/herald.v1.Recipients/UpsertRecipients",
            body(vec![
                field(1, b"utf8-r2"),
                fields(&[field(1, b"utf8-r3"), token]),
            ]),
            HeraldCodec::<_, UpsertRecipientsResponse>::default(),
        )
        .await,
        "recipients[1].push_tokens[0].token",
    );
    for id in ["utf8-r2", "utf8-r3"] {
        let missing = recipients
            .get_recipient(authed(GetRecipientRequest { id: id.into() }, API_KEY))
            .await
            .expect_err("a recipient of a rejected batch was stored");
        assert_eq!(missing.code(), Code::NotFound, "{id}: {missing:?}");
    }

    // Engagement/Report (detail = 6) and Breakers/Get (campaign_id = 1).
    expect_invalid(
        call(
            &channel,
            "/herald.v1.Engagement/Report",
            body(vec![fields(&[
                field(2, b"01HZZZZZZZZZZZZZZZZZZZZZZZ"),
                field(6, BAD),
            ])]),
            HeraldCodec::<_, ReportResponse>::default(),
        )
        .await,
        "reports[0].detail",
    );
    expect_invalid(
        call(
            &channel,
            "/herald.v1.Breakers/Get",
            body(vec![BAD.to_vec()]),
            HeraldCodec::<_, BreakerStatus>::default(),
        )
        .await,
        "campaign_id",
    );

    // A malformed body that is not about UTF-8 keeps its code (INTERNAL, as prost codecs do).
    let mut truncated = message_request(b"utf8-ok", b"utf8-key-2", b"hi", &[]);
    truncated.pop();
    let status = call(
        &channel,
        send,
        body(vec![truncated]),
        HeraldCodec::<_, SendResponse>::default(),
    )
    .await
    .expect_err("a truncated message");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
}

/// The services and symbols reflection answers over one protocol version.
macro_rules! reflection_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let ask = |request: MessageRequest| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut client = ServerReflectionClient::new($channel.clone());
        let mut replies = client
            .server_reflection_info(tokio_stream::once(ask(MessageRequest::ListServices(
                String::new(),
            ))))
            .await
            .expect(concat!("reflection ", stringify!($version)))
            .into_inner();
        let reply = tokio::time::timeout(REPLY_TIMEOUT, replies.message())
            .await
            .expect("reflection reply in time")
            .expect("reflection reply")
            .expect("one reflection reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("expected a service list: {reply:?}");
        };
        let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();

        // Every listed service can be described.
        let asks: Vec<_> = names
            .iter()
            .map(|name| ask(MessageRequest::FileContainingSymbol(name.clone())))
            .collect();
        let mut replies = client
            .server_reflection_info(tokio_stream::iter(asks))
            .await
            .expect("reflection stream")
            .into_inner();
        for name in &names {
            let reply = tokio::time::timeout(REPLY_TIMEOUT, replies.message())
                .await
                .expect("reflection reply in time")
                .expect("reflection reply")
                .expect("a reflection reply");
            match reply.message_response {
                Some(MessageResponse::FileDescriptorResponse(files)) => assert!(
                    !files.file_descriptor_proto.is_empty(),
                    "no descriptor for {name}"
                ),
                other => panic!(
                    "{}: {name} is listed but not described: {other:?}",
                    stringify!($version)
                ),
            }
        }
        names
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_advertise_exactly_the_served_services() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let cluster = Cluster::start(1, NodeSpec::default()).await;
    let channel = support::channel(&cluster.node_addrs[0]).await;

    let expected: BTreeSet<String> = NODE_SERVICES.iter().map(|s| s.to_string()).collect();
    let v1 = reflection_services!(v1, channel);
    assert_eq!(v1, expected, "reflection v1 lists what the node serves");
    let v1alpha = reflection_services!(v1alpha, channel);
    assert_eq!(
        v1alpha, expected,
        "reflection v1alpha lists what the node serves"
    );

    let mut health = HealthClient::new(channel);
    for service in std::iter::once("").chain(
        NODE_SERVICES
            .iter()
            .copied()
            .filter(|s| s.starts_with("herald.")),
    ) {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            reply.status(),
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
    let control = health
        .check(HealthCheckRequest {
            service: "herald.v1.Control".into(),
        })
        .await
        .expect_err("a node does not serve Control");
    assert_eq!(control.code(), Code::NotFound, "{control:?}");
}
