//! # delivery: send messages and wait for their logs
//!
//! Owns the `Delivery` calls of the black-box tests — [`send`], [`send_batch`],
//! [`get_message`] — and the waits on a message's event log: until a condition holds
//! ([`wait_for_log`]), until it is terminal ([`wait_terminal`], [`send_until_terminal`]), for many
//! messages at once ([`wait_all_terminal`]). Also what terminal means for a log
//! ([`is_terminal_log`], by the proto crate's [`is_terminal`]) and a one-line rendering of a log
//! for panic messages ([`describe`]).
//!
//! It must never assert what a test checks (a status, an event, a reason): the waits return the
//! log and the test asserts on it. It fails only when it cannot do its job: a call the test did
//! not expect to fail (a `GetMessage` error while waiting), or a wait that runs out of time.
//!
//! The clients are taken by `&`: each call works on a clone (a tonic client is a cheap handle on
//! its channel), so a test can wait on one message while it uses the same client for another.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::{
    GetMessageRequest, GetMessageResponse, MessageRequest, MessageStatus, SendBatchRequest,
    SendRequest, SendResponse,
};
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::cluster::authed;
use crate::eventually::eventually_ok;

/// How many messages [`wait_all_terminal`] waits on at a time: enough to read thousands of
/// finished logs quickly, few enough to leave the nodes under test alone while they work.
pub const ALL_TERMINAL_CONCURRENCY: usize = 16;

/// Whether a status ends a message's life: the proto crate's one definition, which the node
/// uses too (anything but Pending, Deferred and Unspecified).
pub use herald_proto::status::is_terminal;

/// The status of the log's last event (the message's status); Unspecified for an empty log.
pub fn last_status(log: &GetMessageResponse) -> MessageStatus {
    log.events
        .last()
        .map(|e| e.status())
        .unwrap_or(MessageStatus::Unspecified)
}

/// Whether the message of `log` is terminal (its last event's status is).
pub fn is_terminal_log(log: &GetMessageResponse) -> bool {
    is_terminal(last_status(log))
}

/// The log on one line, `kind/step/status:reason` per event, for panic messages.
pub fn describe(log: &GetMessageResponse) -> String {
    log.events
        .iter()
        .map(|e| format!("{:?}/{:?}/{:?}:{}", e.kind(), e.step, e.status(), e.reason))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `Send` of one message as the tenant of `api_key`.
pub async fn send(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    message: MessageRequest,
) -> Result<SendResponse, Status> {
    client
        .clone()
        .send(authed(
            SendRequest {
                message: Some(message),
            },
            api_key,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// `SendBatch` as the tenant of `api_key`: the per-message results, in request order.
pub async fn send_batch(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    messages: Vec<MessageRequest>,
) -> Result<Vec<SendResponse>, Status> {
    client
        .clone()
        .send_batch(authed(SendBatchRequest { messages }, api_key))
        .await
        .map(|r| r.into_inner().results)
}

/// `GetMessage` as the tenant of `api_key`: the message's view and its event log.
pub async fn get_message(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    message_id: &str,
) -> Result<GetMessageResponse, Status> {
    client
        .clone()
        .get_message(authed(
            GetMessageRequest {
                message_id: message_id.to_string(),
            },
            api_key,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until `done` holds for the message's log, and returns that log.
///
/// # Panics
/// When `GetMessage` fails, or after `timeout`: the message names `what` and shows the last log.
pub async fn wait_for_log(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    message_id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&GetMessageResponse) -> bool,
) -> GetMessageResponse {
    let done = &done;
    eventually_ok(what, timeout, || async move {
        let log = get_message(client, api_key, message_id)
            .await
            .unwrap_or_else(|s| panic!("{what}: get_message {message_id}: {s:?}"));
        if done(&log) {
            Ok(log)
        } else {
            Err(format!("message {message_id}: {}", describe(&log)))
        }
    })
    .await
}

/// Waits until the message is terminal ([`is_terminal_log`]), and returns its log.
///
/// # Panics
/// When `GetMessage` fails, or after `timeout` (showing the last log).
pub async fn wait_terminal(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    message_id: &str,
    timeout: Duration,
) -> GetMessageResponse {
    let what = format!("message {message_id} terminal");
    wait_for_log(client, api_key, message_id, &what, timeout, is_terminal_log).await
}

/// Sends `message` and waits until it is terminal; returns its log.
///
/// # Panics
/// When `Send` or `GetMessage` fails, or after `timeout`.
pub async fn send_until_terminal(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    message: MessageRequest,
    timeout: Duration,
) -> GetMessageResponse {
    let id = send(client, api_key, message)
        .await
        .unwrap_or_else(|s| panic!("send: {s:?}"))
        .message_id;
    wait_terminal(client, api_key, &id, timeout).await
}

/// Waits until every message of `ids` is terminal; returns each one's log as first seen
/// terminal. All of them share one deadline, `timeout` from now; [`ALL_TERMINAL_CONCURRENCY`]
/// are waited on at a time.
///
/// # Panics
/// When `GetMessage` fails, or when a message is not terminal by the deadline (showing its log).
pub async fn wait_all_terminal(
    client: &DeliveryClient<Channel>,
    api_key: &str,
    ids: &[String],
    timeout: Duration,
) -> HashMap<String, GetMessageResponse> {
    let deadline = Instant::now() + timeout;
    futures::stream::iter(ids)
        .map(|id| async move {
            let left = deadline.saturating_duration_since(Instant::now());
            let log = wait_terminal(client, api_key, id, left).await;
            (id.clone(), log)
        })
        .buffer_unordered(ALL_TERMINAL_CONCURRENCY)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use herald_proto::v1::Event;

    use super::*;

    #[test]
    fn a_log_reads_as_its_last_event() {
        let event = |status: MessageStatus| Event {
            status: status as i32,
            ..Default::default()
        };
        let mut log = GetMessageResponse::default();
        assert_eq!(last_status(&log), MessageStatus::Unspecified);
        assert!(!is_terminal_log(&log), "an empty log is not terminal");
        log.events.push(event(MessageStatus::Pending));
        assert!(!is_terminal_log(&log));
        log.events.push(event(MessageStatus::Deferred));
        assert!(!is_terminal_log(&log), "deferred is waiting, not done");
        log.events.push(event(MessageStatus::Delivered));
        assert_eq!(last_status(&log), MessageStatus::Delivered);
        assert!(is_terminal_log(&log));
    }
}
