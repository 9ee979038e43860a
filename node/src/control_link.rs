//! # control_link: calls this node makes to the control plane's leader for its clients
//!
//! Owns finding the leader among the configured control replicas (a follower answers
//! `UNAVAILABLE not_leader{…}`; the last one that answered is tried first) and calling it over
//! the cluster's mutual TLS, as this node: campaign commands for the tenant the API
//! authenticated. A leader change is retried within [`CALL_DEADLINE`]; every other answer
//! (`INVALID_ARGUMENT`, `NOT_FOUND`, `FAILED_PRECONDITION`) goes back to the client as the
//! leader gave it. Must never decide anything itself.

use std::time::Duration;

use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::{CampaignCommandRequest, CampaignLife};
use herald_tls::{Dialer, Role};
use parking_lot::Mutex;
use tonic::transport::Channel;

/// How long a call keeps looking for a leader (a fail-over takes up to the leader lease's ttl).
pub const CALL_DEADLINE: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub struct ControlLink {
    addrs: Vec<String>,
    dialer: Dialer,
    /// Index of the replica that answered last.
    last: Mutex<usize>,
}

impl ControlLink {
    pub fn new(addrs: Vec<String>, dialer: Dialer) -> Self {
        Self {
            addrs,
            dialer,
            last: Mutex::new(0),
        }
    }

    fn client(&self, address: &str) -> Result<ControlClient<Channel>, tonic::Status> {
        let channel = self
            .dialer
            .channel(address, Role::Control, |endpoint| {
                endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(CALL_TIMEOUT)
            })
            .map_err(|e| tonic::Status::unavailable(format!("control plane {address}: {e}")))?;
        Ok(ControlClient::new(channel))
    }

    /// A campaign command, answered by the leader.
    pub async fn campaign_command(
        &self,
        request: CampaignCommandRequest,
    ) -> Result<CampaignLife, tonic::Status> {
        if self.addrs.is_empty() {
            return Err(tonic::Status::unavailable(
                "no control plane configured (control_addrs)",
            ));
        }
        let deadline = tokio::time::Instant::now() + CALL_DEADLINE;
        let mut index = *self.last.lock();
        let mut last_error;
        loop {
            let address = self.addrs[index % self.addrs.len()].clone();
            let answer = match self.client(&address) {
                Ok(mut client) => client.campaign_command(request.clone()).await,
                Err(status) => Err(status),
            };
            match answer {
                Ok(response) => {
                    *self.last.lock() = index % self.addrs.len();
                    return response
                        .into_inner()
                        .life
                        .ok_or_else(|| tonic::Status::internal("control plane sent no lifecycle"));
                }
                // A follower, a replica going away, or one we cannot reach: the next one.
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    last_error = status;
                }
                Err(status) => return Err(status),
            }
            index += 1;
            if tokio::time::Instant::now() >= deadline {
                return Err(tonic::Status::unavailable(format!(
                    "control plane leader not reachable: {}",
                    last_error.message()
                )));
            }
            if index.is_multiple_of(self.addrs.len()) {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
