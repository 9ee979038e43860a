//! # membership: this node's side of the control plane
//!
//! Owns joining, heartbeats and following the partition table. Tries each configured control
//! replica in turn (followers answer `not_leader`), rejoins when the leader forgets the node,
//! and installs every newer table into [`Ownership`]. On shutdown it leaves, so the node's
//! partitions move as a planned move rather than after a failure timeout.
//!
//! Must never install a table older than the one it has (Ownership enforces it) and never
//! decide ownership itself.

use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::{
    CampaignAssignments, CampaignProgress, HeartbeatRequest, JoinRequest, LeaveRequest, NodeInfo,
    WatchCampaignsRequest, WatchTableRequest,
};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tracing::{info, warn};

use herald_tls::{Dialer, Role};

use crate::ownership::Ownership;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the membership link carries for this node's campaigns: their progress out with each
/// heartbeat, the leader's assignments in. (The campaign runner implements it.)
pub trait CampaignFeed: Send + Sync {
    /// Progress of the running campaigns' slices here, for the next heartbeat.
    fn progress(&self) -> Vec<CampaignProgress>;
    /// The leader's assignments for this node (kept until the next ones, also while no leader
    /// answers: a control-plane fail-over does not stop a campaign).
    fn assign(&self, assignments: CampaignAssignments);
}
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A client of the control replica at `address` (mutual TLS unless the cluster runs without).
async fn connect(dialer: &Dialer, address: &str) -> Result<ControlClient<Channel>, String> {
    let channel = dialer
        .channel(address, Role::Control, |endpoint| {
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(Duration::from_secs(5))
        })
        .map_err(|e| e.to_string())?;
    Ok(ControlClient::new(channel))
}

/// Follows the control plane until `shutdown` turns true; then leaves the cluster.
pub async fn run(
    ownership: Arc<Ownership>,
    info: NodeInfo,
    control_addrs: Vec<String>,
    dialer: Dialer,
    campaigns: Arc<dyn CampaignFeed>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    let mut last_leader: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let address = control_addrs[next % control_addrs.len()].clone();
        next += 1;
        match follow(
            &ownership,
            &info,
            &dialer,
            &address,
            &*campaigns,
            &mut shutdown,
        )
        .await
        {
            Ok(()) => {
                last_leader = Some(address);
                break;
            }
            Err(reason) => {
                if last_leader.as_deref() == Some(address.as_str()) || control_addrs.len() == 1 {
                    warn!(control = %address, %reason, "control plane unreachable; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    // Planned leave: try every replica once; the leader moves our partitions away.
    for address in last_leader.iter().chain(control_addrs.iter()) {
        if let Ok(mut client) = connect(&dialer, address).await
            && client
                .leave(LeaveRequest {
                    node_id: info.node_id.clone(),
                })
                .await
                .is_ok()
        {
            info!(node = %info.node_id, "left the cluster");
            return;
        }
    }
}

/// Joins through `address` and follows it until it fails (Err) or shutdown (Ok).
async fn follow(
    ownership: &Arc<Ownership>,
    info: &NodeInfo,
    dialer: &Dialer,
    address: &str,
    campaigns: &dyn CampaignFeed,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut client = connect(dialer, address).await?;
    let joined = client
        .join(JoinRequest {
            node: Some(info.clone()),
        })
        .await
        .map_err(|s| format!("join: {}", s.message()))?
        .into_inner();
    if let Some(table) = joined.table {
        ownership.install_table(table);
    }
    info!(node = %info.node_id, control = %address, epoch = %ownership.table().epoch, "joined the cluster");
    let mut tables = client
        .watch_table(WatchTableRequest {
            node_id: info.node_id.clone(),
        })
        .await
        .map_err(|s| format!("watch_table: {}", s.message()))?
        .into_inner();
    let mut assignments = client
        .watch_campaigns(WatchCampaignsRequest {
            node_id: info.node_id.clone(),
        })
        .await
        .map_err(|s| format!("watch_campaigns: {}", s.message()))?
        .into_inner();
    let interval = Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(50)));
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            table = tables.next() => match table {
                Some(Ok(table)) => { ownership.install_table(table); }
                Some(Err(status)) => return Err(format!("watch_table: {}", status.message())),
                None => return Err("watch_table ended".into()),
            },
            assigned = assignments.next() => match assigned {
                Some(Ok(assigned)) => campaigns.assign(assigned),
                Some(Err(status)) => return Err(format!("watch_campaigns: {}", status.message())),
                None => return Err("watch_campaigns ended".into()),
            },
            _ = heartbeat.tick() => {
                let reply = client
                    .heartbeat(HeartbeatRequest {
                        node_id: info.node_id.clone(),
                        epoch: ownership.table().epoch.0,
                        serving_partitions: ownership.serving_count(),
                        campaigns: campaigns.progress(),
                    })
                    .await
                    .map_err(|s| format!("heartbeat: {}", s.message()))?
                    .into_inner();
                if !reply.known {
                    return Err("control plane forgot this node; joining again".into());
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
