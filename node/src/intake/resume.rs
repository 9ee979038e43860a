//! The active messages of partitions this node just took over: resumed from their logs, in
//! acceptance order.

use std::sync::Arc;

use herald_proto::{Epoch, MessageId, PartitionId};
use herald_store::Fence;
use tracing::{info, warn};

use super::Intake;
use crate::actors::recipient::RecipientMsg;

/// Messages read concurrently while resuming a taken-over partition.
const RESUME_READS_IN_FLIGHT: usize = 32;

impl Intake {
    /// Resumes the active messages of newly acquired partitions from their event logs.
    pub async fn resume_partitions(&self, partitions: Vec<(PartitionId, Epoch)>) {
        use futures::StreamExt;
        let mut pending = Vec::new();
        for (partition, epoch) in partitions {
            match self.store.active_messages(partition).await {
                Ok(active) => {
                    let fence = Fence { partition, epoch };
                    pending.extend(active.into_iter().map(|(tenant, id)| (tenant, id, fence)));
                }
                Err(error) => warn!(%partition, %error, "listing active messages failed"),
            }
        }
        if pending.is_empty() {
            return;
        }
        let count = pending.len();
        // Message ids are ULIDs: sorted, they are in acceptance order, and `buffered` keeps that
        // order for dispatch while the reads run in parallel (a takeover can bring thousands).
        pending.sort_by(|a, b| a.1.cmp(&b.1));
        let store = &self.store;
        let reads =
            futures::stream::iter(pending.into_iter().map(|(tenant, id, fence)| async move {
                let record = store.get_message(&tenant, &id).await;
                (tenant, id, fence, record)
            }))
            .buffered(RESUME_READS_IN_FLIGHT);
        futures::pin_mut!(reads);
        let mut resumed = 0usize;
        while let Some((tenant, id, fence, record)) = reads.next().await {
            match record {
                Ok(Some(record)) => {
                    let tenant = self.tenants.tenant(&tenant.0);
                    let Some(permit) = self.directory.admit().await else {
                        return;
                    };
                    let recipient_id = record
                        .message
                        .request
                        .as_ref()
                        .map(|r| r.recipient_id.clone())
                        .unwrap_or_default();
                    // The actor reads the log when it gets to the job.
                    let mut job =
                        Self::job(&tenant, Arc::new(record.message), fence, None, permit, None);
                    job.history = None;
                    self.directory.dispatch(
                        (tenant.id.clone(), recipient_id),
                        fence.partition,
                        RecipientMsg::Run(Box::new(job)),
                    );
                    resumed += 1;
                }
                Ok(None) => warn!(
                    partition = %fence.partition,
                    message_id = %MessageId::as_str(&id),
                    "active message without record"
                ),
                Err(error) => {
                    warn!(partition = %fence.partition, %error, "loading active message failed")
                }
            }
        }
        info!(node = %self.node_id, resumed, listed = count, "resumed active messages");
    }
}
