//! # peers: node-to-node links
//!
//! Owns one bidirectional `Forward` stream per peer address. Batches go out tagged with an id;
//! replies are matched by id. A broken stream fails its pending batches (the router retries
//! them against a newer table) and is re-opened on next use. Bounded: at most
//! `PENDING_BATCHES_MAX` batches wait per link.
//!
//! Must never retry on its own: retry decisions belong to the router.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::Epoch;
use herald_proto::v1::forward_client::ForwardClient;
use herald_proto::v1::{ForwardBatch, ForwardItem, ForwardResult, forward_result};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

const PENDING_BATCHES_MAX: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect: {0}")]
    Connect(String),
    #[error("link closed: {0}")]
    Closed(String),
    #[error("reply has {got} results for {sent} items")]
    Mismatch { got: usize, sent: usize },
}

type Reply = oneshot::Sender<Result<Vec<ForwardResult>, Error>>;

struct Link {
    outbound: mpsc::Sender<(ForwardBatch, Reply)>,
}

#[derive(Clone, Default)]
pub struct Peers {
    links: Arc<Mutex<HashMap<String, Arc<Link>>>>,
    next_batch_id: Arc<AtomicU64>,
}

impl Peers {
    /// Sends `items` to the node at `address`; one result per item, in order.
    pub async fn forward(
        &self,
        address: &str,
        epoch: Epoch,
        items: Vec<ForwardItem>,
    ) -> Result<Vec<ForwardResult>, Error> {
        let sent = items.len();
        let link = self.link(address).await?;
        let batch = ForwardBatch {
            batch_id: self.next_batch_id.fetch_add(1, Ordering::Relaxed),
            epoch: epoch.0,
            items,
        };
        let (reply, wait) = oneshot::channel();
        if link.outbound.send((batch, reply)).await.is_err() {
            self.drop_link(address, &link);
            return Err(Error::Closed("link task ended".into()));
        }
        let results = match wait.await {
            Ok(result) => result,
            Err(_) => Err(Error::Closed("link task ended".into())),
        };
        if results.is_err() {
            self.drop_link(address, &link);
        }
        let results = results?;
        if results.len() != sent {
            return Err(Error::Mismatch {
                got: results.len(),
                sent,
            });
        }
        Ok(results)
    }

    fn drop_link(&self, address: &str, link: &Arc<Link>) {
        let mut links = self.links.lock();
        if links.get(address).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(address);
        }
    }

    async fn link(&self, address: &str) -> Result<Arc<Link>, Error> {
        if let Some(link) = self.links.lock().get(address) {
            return Ok(link.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::Connect(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Connect(format!("{address}: {e}")))?;
        let mut client = ForwardClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (outbound, mut requests) = mpsc::channel::<(ForwardBatch, Reply)>(PENDING_BATCHES_MAX);
        let (stream_tx, stream_rx) = mpsc::channel::<ForwardBatch>(PENDING_BATCHES_MAX);
        let mut inbound = client
            .forward(ReceiverStream::new(stream_rx))
            .await
            .map_err(|e| Error::Connect(format!("{address}: {e}")))?
            .into_inner();
        let link = Arc::new(Link { outbound });
        {
            let mut links = self.links.lock();
            if let Some(existing) = links.get(address) {
                // Another task connected first; use its link (ours closes when dropped).
                return Ok(existing.clone());
            }
            links.insert(address.to_string(), link.clone());
        }
        let address = address.to_string();
        tokio::spawn(async move {
            let mut pending: HashMap<u64, Reply> = HashMap::new();
            let reason = loop {
                tokio::select! {
                    request = requests.recv() => {
                        let Some((batch, reply)) = request else { break "link dropped".to_string() };
                        let id = batch.batch_id;
                        if stream_tx.send(batch).await.is_err() {
                            let _ = reply.send(Err(Error::Closed("stream closed".into())));
                            break "stream closed".to_string();
                        }
                        pending.insert(id, reply);
                    }
                    reply = inbound.next() => match reply {
                        Some(Ok(reply)) => {
                            if let Some(waiter) = pending.remove(&reply.batch_id) {
                                let _ = waiter.send(Ok(reply.results));
                            }
                        }
                        Some(Err(status)) => break format!("{}: {}", status.code(), status.message()),
                        None => break "peer closed the stream".to_string(),
                    }
                }
            };
            debug!(peer = %address, %reason, pending = pending.len(), "forward link closed");
            for (_, waiter) in pending {
                let _ = waiter.send(Err(Error::Closed(reason.clone())));
            }
        });
        Ok(link)
    }
}

/// Where the partition of an internal key (a channel's schedule, a breaker) is served.
pub enum KeyOwner {
    /// Here, under this fence.
    Local(herald_store::Fence),
    /// At a peer: forward the request there (see [`Peers::forward_one`]).
    Remote { address: String, epoch: Epoch },
}

/// The owner of `partition_of(partition_count)`: this node (waiting up to a lease TTL for its
/// fence) or a peer.
pub async fn key_owner(
    context: &crate::context::NodeContext,
    partition_of: impl FnOnce(u32) -> herald_proto::PartitionId,
) -> Result<KeyOwner, String> {
    let table = context.ownership.table();
    if table.partition_count == 0 {
        return Err("no partition table yet".into());
    }
    let partition = partition_of(table.partition_count);
    let owner = table
        .owner(partition)
        .ok_or_else(|| format!("partition {partition} has no owner"))?;
    if owner.node_id != context.node_id.0 {
        return Ok(KeyOwner::Remote {
            address: owner.address.clone(),
            epoch: table.epoch,
        });
    }
    context
        .ownership
        .fence_or_wait(
            partition,
            Duration::from_millis(context.config.lease_ttl_ms),
        )
        .await
        .map(KeyOwner::Local)
        .map_err(|e| e.to_string())
}

impl Peers {
    /// Forwards one item; its result, or why there is none.
    pub async fn forward_one(
        &self,
        address: &str,
        epoch: Epoch,
        item: ForwardItem,
    ) -> Result<forward_result::Result, String> {
        // Boxed: the gRPC call's future is ~3 KB, and every caller up to the recipient actor's
        // message handler (rate limits, breakers, the step walk) would carry it inline and
        // copy it on each call, also when no remote call is made (perf: memmove 12%).
        let results = Box::pin(self.forward(address, epoch, vec![item]))
            .await
            .map_err(|e| e.to_string())?;
        results
            .into_iter()
            .next()
            .and_then(|r| r.result)
            .ok_or_else(|| "empty reply".to_owned())
    }
}
