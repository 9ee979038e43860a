//! # peers: node-to-node links
//!
//! Owns one connection (a tonic `Channel`) per peer address, built on first use, and on it the
//! two bidirectional streams of the `Forward` service: `Forward` (batches of routed requests,
//! for the router) and `Channels` (batches of calls to ChannelActors, for the channels
//! component). Each stream multiplexes batches tagged with an id; replies are matched by id. A
//! broken stream fails its pending batches (the caller retries them against a newer table) and
//! is re-opened on next use; a peer that cannot be reached is forgotten, so the next use
//! connects afresh. Bounded: at most `PENDING_BATCHES_MAX` batches wait per stream.
//!
//! Links to peers are mutual TLS with the cluster's certificates: each end proves it is a
//! cluster node (see `herald_tls`).
//!
//! One `Peers` is built by the server assembly and handed (cloned: it is a handle over shared
//! state) to every component that talks to other nodes, so a node keeps one link pool, not one
//! per component. Must never retry on its own: retry decisions belong to the callers, and must
//! never look at what it carries beyond the batch ids.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::Epoch;
use herald_proto::v1::forward_client::ForwardClient;
use herald_proto::v1::{
    ChannelCall, ChannelCallBatch, ChannelReply, ChannelReplyBatch, ForwardBatch, ForwardItem,
    ForwardReply, ForwardResult,
};
use herald_tls::{Dialer, Role};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::debug;

const PENDING_BATCHES_MAX: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// gRPC message size limit of the internal streams (a full batch of maximum-size messages).
const MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("connect: {0}")]
    Connect(String),
    #[error("link closed: {0}")]
    Closed(String),
    #[error("reply has {got} results for {sent} items")]
    Mismatch { got: usize, sent: usize },
}

/// What one stream carries: outgoing batches with an id, and reply batches with the same id.
trait Batch: Send + 'static {
    type Reply: Send + 'static;
    fn id(&self) -> u64;
}

trait ReplyBatch: Send + 'static {
    type Results: Send + 'static;
    fn id(&self) -> u64;
    fn into_results(self) -> Self::Results;
}

impl Batch for ForwardBatch {
    type Reply = ForwardReply;
    fn id(&self) -> u64 {
        self.batch_id
    }
}

impl ReplyBatch for ForwardReply {
    type Results = Vec<ForwardResult>;
    fn id(&self) -> u64 {
        self.batch_id
    }
    fn into_results(self) -> Vec<ForwardResult> {
        self.results
    }
}

impl Batch for ChannelCallBatch {
    type Reply = ChannelReplyBatch;
    fn id(&self) -> u64 {
        self.batch_id
    }
}

impl ReplyBatch for ChannelReplyBatch {
    type Results = Vec<ChannelReply>;
    fn id(&self) -> u64 {
        self.batch_id
    }
    fn into_results(self) -> Vec<ChannelReply> {
        self.replies
    }
}

type Waiter<R> = oneshot::Sender<Result<R, Error>>;

/// One open stream: batches go to its task, which writes them and matches the replies.
struct Link<B: Batch>
where
    B::Reply: ReplyBatch,
{
    outbound: mpsc::Sender<(B, Waiter<<B::Reply as ReplyBatch>::Results>)>,
}

/// Where a peer keeps the open stream of one kind (none until first use, or after it broke).
type LinkSlot<B> = Mutex<Option<Arc<Link<B>>>>;

/// One peer node: its connection and the streams open on it.
struct Peer {
    channel: Channel,
    forward: LinkSlot<ForwardBatch>,
    channels: LinkSlot<ChannelCallBatch>,
}

#[derive(Clone)]
pub struct Peers {
    peers: Arc<Mutex<HashMap<String, Arc<Peer>>>>,
    next_batch_id: Arc<AtomicU64>,
    /// Mutual TLS with the cluster's certificates (plaintext only where the config says so).
    dialer: Dialer,
}

impl Default for Peers {
    /// Plaintext links (unit tests of one process).
    fn default() -> Self {
        Peers::new(Dialer::Plain)
    }
}

impl Peers {
    pub fn new(dialer: Dialer) -> Peers {
        Peers {
            peers: Arc::default(),
            next_batch_id: Arc::default(),
            dialer,
        }
    }

    /// Sends `items` to the node at `address`; one result per item, in order.
    pub async fn forward(
        &self,
        address: &str,
        epoch: Epoch,
        items: Vec<ForwardItem>,
    ) -> Result<Vec<ForwardResult>, Error> {
        let sent = items.len();
        let batch = ForwardBatch {
            batch_id: self.next_batch_id.fetch_add(1, Ordering::Relaxed),
            epoch: epoch.0,
            items,
        };
        let results = self
            .send(address, batch, |peer| &peer.forward, open_forward)
            .await?;
        check_len(results, sent)
    }

    /// Sends calls to the ChannelActors of the node at `address`; one reply per call, in order.
    pub async fn channel_calls(
        &self,
        address: &str,
        epoch: Epoch,
        calls: Vec<ChannelCall>,
    ) -> Result<Vec<ChannelReply>, Error> {
        let sent = calls.len();
        let batch = ChannelCallBatch {
            batch_id: self.next_batch_id.fetch_add(1, Ordering::Relaxed),
            epoch: epoch.0,
            calls,
        };
        let results = self
            .send(address, batch, |peer| &peer.channels, open_channels)
            .await?;
        check_len(results, sent)
    }

    /// Sends one batch on the stream `slot` picks of the peer at `address`, opening the
    /// connection and the stream as needed.
    async fn send<B, Open, Opened>(
        &self,
        address: &str,
        batch: B,
        slot: fn(&Peer) -> &LinkSlot<B>,
        open: Open,
    ) -> Result<<B::Reply as ReplyBatch>::Results, Error>
    where
        B: Batch,
        B::Reply: ReplyBatch,
        Open: FnOnce(ForwardClient<Channel>, ReceiverStream<B>) -> Opened,
        Opened: Future<Output = Result<tonic::Streaming<B::Reply>, tonic::Status>>,
    {
        let peer = self.peer(address)?;
        let open_link = slot(&peer).lock().clone();
        let link = match open_link {
            Some(link) => link,
            None => match self.open_link(address, &peer, slot, open).await {
                Ok(link) => link,
                Err(error) => {
                    // Unreachable: the next use connects afresh (the node may have moved).
                    self.forget(address, &peer);
                    return Err(error);
                }
            },
        };
        let (reply, wait) = oneshot::channel();
        if link.outbound.send((batch, reply)).await.is_err() {
            drop_link(slot(&peer), &link);
            return Err(Error::Closed("link task ended".into()));
        }
        let results = match wait.await {
            Ok(result) => result,
            Err(_) => Err(Error::Closed("link task ended".into())),
        };
        if results.is_err() {
            drop_link(slot(&peer), &link);
        }
        results
    }

    fn peer(&self, address: &str) -> Result<Arc<Peer>, Error> {
        let mut peers = self.peers.lock();
        if let Some(peer) = peers.get(address) {
            return Ok(peer.clone());
        }
        // Lazy: the connection is made by the first stream opened on it, within the connect
        // timeout; a broken connection is re-made by the channel itself.
        let channel = self
            .dialer
            .channel(address, Role::Node, |endpoint| {
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
            })
            .map_err(|e| Error::Connect(e.to_string()))?;
        let peer = Arc::new(Peer {
            channel,
            forward: Mutex::new(None),
            channels: Mutex::new(None),
        });
        peers.insert(address.to_owned(), peer.clone());
        Ok(peer)
    }

    fn forget(&self, address: &str, peer: &Arc<Peer>) {
        let mut peers = self.peers.lock();
        if peers.get(address).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            peers.remove(address);
        }
    }

    async fn open_link<B, Open, Opened>(
        &self,
        address: &str,
        peer: &Peer,
        slot: fn(&Peer) -> &LinkSlot<B>,
        open: Open,
    ) -> Result<Arc<Link<B>>, Error>
    where
        B: Batch,
        B::Reply: ReplyBatch,
        Open: FnOnce(ForwardClient<Channel>, ReceiverStream<B>) -> Opened,
        Opened: Future<Output = Result<tonic::Streaming<B::Reply>, tonic::Status>>,
    {
        let client = ForwardClient::new(peer.channel.clone())
            .max_decoding_message_size(MESSAGE_MAX_BYTES)
            .max_encoding_message_size(MESSAGE_MAX_BYTES);
        let (outbound, requests) = mpsc::channel(PENDING_BATCHES_MAX);
        let (stream_tx, stream_rx) = mpsc::channel::<B>(PENDING_BATCHES_MAX);
        let opening = open(client, ReceiverStream::new(stream_rx));
        let inbound = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .map_err(|_| Error::Connect(format!("{address}: timed out")))?
            .map_err(|e| Error::Connect(format!("{address}: {e}")))?;
        let link = Arc::new(Link { outbound });
        {
            let mut current = slot(peer).lock();
            if let Some(existing) = current.as_ref() {
                // Another task opened the stream first; use it (ours closes when dropped).
                return Ok(existing.clone());
            }
            *current = Some(link.clone());
        }
        tokio::spawn(run_link(address.to_owned(), requests, stream_tx, inbound));
        Ok(link)
    }
}

async fn open_forward(
    mut client: ForwardClient<Channel>,
    stream: ReceiverStream<ForwardBatch>,
) -> Result<tonic::Streaming<ForwardReply>, tonic::Status> {
    client
        .forward(stream)
        .await
        .map(tonic::Response::into_inner)
}

async fn open_channels(
    mut client: ForwardClient<Channel>,
    stream: ReceiverStream<ChannelCallBatch>,
) -> Result<tonic::Streaming<ChannelReplyBatch>, tonic::Status> {
    client
        .channels(stream)
        .await
        .map(tonic::Response::into_inner)
}

fn check_len<T>(results: Vec<T>, sent: usize) -> Result<Vec<T>, Error> {
    if results.len() != sent {
        return Err(Error::Mismatch {
            got: results.len(),
            sent,
        });
    }
    Ok(results)
}

fn drop_link<B: Batch>(slot: &LinkSlot<B>, link: &Arc<Link<B>>)
where
    B::Reply: ReplyBatch,
{
    let mut current = slot.lock();
    if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
        *current = None;
    }
}

/// A stream's task: writes batches, matches replies to their waiters, fails them all when the
/// stream breaks.
async fn run_link<B>(
    address: String,
    mut requests: mpsc::Receiver<(B, Waiter<<B::Reply as ReplyBatch>::Results>)>,
    stream_tx: mpsc::Sender<B>,
    mut inbound: tonic::Streaming<B::Reply>,
) where
    B: Batch,
    B::Reply: ReplyBatch,
{
    let mut pending: HashMap<u64, Waiter<<B::Reply as ReplyBatch>::Results>> = HashMap::new();
    let reason = loop {
        tokio::select! {
            request = requests.recv() => {
                let Some((batch, reply)) = request else { break "link dropped".to_string() };
                let id = batch.id();
                if stream_tx.send(batch).await.is_err() {
                    let _ = reply.send(Err(Error::Closed("stream closed".into())));
                    break "stream closed".to_string();
                }
                pending.insert(id, reply);
            }
            reply = inbound.next() => match reply {
                Some(Ok(reply)) => {
                    if let Some(waiter) = pending.remove(&reply.id()) {
                        let _ = waiter.send(Ok(reply.into_results()));
                    }
                }
                Some(Err(status)) => break format!("{}: {}", status.code(), status.message()),
                None => break "peer closed the stream".to_string(),
            }
        }
    };
    debug!(peer = %address, %reason, pending = pending.len(), "peer stream closed");
    for (_, waiter) in pending {
        let _ = waiter.send(Err(Error::Closed(reason.clone())));
    }
}
