//! `WatchMessages`: live events from every node, merged.
//!
//! The node a client watches through opens `WatchLocal` on every node of the current table
//! (itself included, in process) and merges the streams. Best effort and bounded: a subscriber
//! that lags behind the node's buffer gets `RESOURCE_EXHAUSTED` and should re-read history with
//! `GetMessage`. Nodes that join after the watch started are not included.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use herald_proto::v1::forward_client::ForwardClient;
use herald_proto::v1::{Event, WatchLocalRequest};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use herald_proto::NodeId;

use crate::events::EventBus;
use herald_tls::{Dialer, Role};

use crate::ownership::Ownership;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

/// Events recorded by this node's actors that match the filter.
pub fn watch_local(events: &EventBus, filter: WatchLocalRequest) -> EventStream {
    let mut receiver = events.subscribe(filter.terminal_only);
    let stream = async_stream_events(move |sender| async move {
        loop {
            match receiver.recv().await {
                Ok(item) => {
                    if item.tenant.0 != filter.tenant
                        || (filter.terminal_only
                            && !crate::waterfall::is_terminal(item.event.status()))
                        || (!filter.message_id.is_empty()
                            && item.event.message_id != filter.message_id)
                        || (!filter.recipient_id.is_empty()
                            && item.event.recipient_id != filter.recipient_id)
                    {
                        continue;
                    }
                    if sender.send(Ok(item.event.clone())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let _ = sender
                        .send(Err(Status::resource_exhausted(format!(
                            "watcher lagged: {missed} events dropped; re-read with GetMessage"
                        ))))
                        .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Box::pin(stream)
}

fn async_stream_events<F, Fut>(body: F) -> impl Stream<Item = Result<Event, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(body(sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// What a cluster-wide watch needs: this node's feed and the table of the others.
#[derive(Clone)]
pub struct Watch {
    pub node_id: NodeId,
    pub ownership: Arc<Ownership>,
    pub events: EventBus,
    /// How this node dials its peers' internal port.
    pub dialer: Dialer,
}

impl Watch {
    /// Events of every node in the current table, merged.
    pub async fn cluster(&self, filter: WatchLocalRequest) -> Result<EventStream, Status> {
        let table = self.ownership.table();
        let mut streams: Vec<EventStream> = vec![watch_local(&self.events, filter.clone())];
        for node in &table.nodes {
            if node.node_id == self.node_id.0 {
                continue;
            }
            // The peer's internal port, as a node (mutual TLS unless the cluster runs without).
            let channel = self
                .dialer
                .channel(&node.address, Role::Node, |endpoint| {
                    endpoint.connect_timeout(std::time::Duration::from_secs(2))
                })
                .map_err(|e| Status::unavailable(format!("watch {}: {e}", node.node_id)))?;
            let remote = ForwardClient::new(channel)
                .watch_local(filter.clone())
                .await?
                .into_inner();
            streams.push(Box::pin(remote));
        }
        Ok(Box::pin(futures::stream::select_all(streams)))
    }
}
