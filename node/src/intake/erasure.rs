//! What an erasure does besides deleting the record: the phone index entry of the number and
//! the content of the person's messages go (events stay, `redacted`); the opt-outs stay, as
//! proofs under a keyed hash of each contact point, for a record made later with the same
//! contact point to inherit. Must never store a contact point, only its keyed hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::error::Error;
use herald_proto::v1::Recipient;
use herald_store::{Fence, FencedOp, WriteOp};
use tracing::debug;

use super::{Intake, Item};
use crate::auth::Tenant;
use crate::contact_index::ContactIndex;

/// How long an erased person's opt-out is remembered (by keyed hash of the contact point).
pub(super) const OPT_OUT_PROOF_TTL: Duration = Duration::from_secs(5 * 365 * 86_400);

/// What an opt-out kept past an erasure says it came from (`erasure(<original source>)`): not
/// `api`, so a client's re-import that does not name the channel keeps it.
pub(super) fn erased_source(source: &str) -> String {
    format!("erasure({source})")
}

impl Intake {
    /// Erases what a recipient left outside its record: the phone index entry of its number,
    /// and the bodies, variables and free text of its messages (their events stay, `redacted`).
    pub(super) async fn erase_traces(
        &self,
        tenant: &Arc<Tenant>,
        recipient_id: &str,
        prior: Option<&Recipient>,
        fence: Fence,
    ) -> Result<(), Error> {
        let unavailable =
            |error: herald_store::Error| Error::Unavailable(format!("erasure: {error}"));
        if let Some(prior) = prior {
            let proofs = self.opt_out_proofs(tenant, prior, fence);
            if !proofs.is_empty() {
                self.store.write(proofs).await.map_err(unavailable)?;
            }
        }
        if let Some(prior) = prior
            && !prior.phone.is_empty()
        {
            self.delete_index_entry(
                &self.contact_index.phone_key(&tenant.id, &prior.phone),
                recipient_id,
            )
            .await
            .map_err(unavailable)?;
        }
        // When the person last engaged is about them: it goes with them.
        self.store
            .delete_values(&[herald_store::keys::value::last_engaged(
                &tenant.id,
                recipient_id,
            )])
            .await
            .map_err(unavailable)?;
        let redacted = self
            .store
            .redact_messages(&tenant.id, recipient_id)
            .await
            .map_err(unavailable)?;
        debug!(redacted, "recipient's messages redacted");
        Ok(())
    }

    /// The writes that keep `prior`'s opt-outs past its erasure: per channel with an opt-out,
    /// one proof per contact point of that channel, under a keyed hash of the contact point.
    fn opt_out_proofs(
        &self,
        tenant: &Arc<Tenant>,
        prior: &Recipient,
        fence: Fence,
    ) -> Vec<FencedOp> {
        use herald_proto::v1::{Channel, ConsentState, OptOutProof};
        let mut ops = Vec::new();
        for channel in [Channel::Push, Channel::Email, Channel::Sms] {
            let consent: Vec<_> = prior
                .consent
                .iter()
                .filter(|c| c.channel() == channel && c.state() == ConsentState::OptedOut)
                .map(|c| {
                    let mut kept = c.clone();
                    if !kept.source.starts_with("erasure(") {
                        kept.source = erased_source(&kept.source);
                    }
                    kept
                })
                .collect();
            if consent.is_empty() {
                continue;
            }
            let proof = prost::Message::encode_to_vec(&OptOutProof { consent });
            for contact in ContactIndex::contacts(prior, channel) {
                ops.push(FencedOp {
                    fence,
                    op: WriteOp::PutValue {
                        key: self.contact_index.opt_out_key(&tenant.id, channel, contact),
                        value: proof.clone(),
                        ttl: OPT_OUT_PROOF_TTL,
                    },
                });
            }
        }
        ops
    }

    /// For upserts of recipients without a record: the opt-outs erased people left on their
    /// contact points, as a prior ledger to merge (looked up concurrently; a lookup that fails
    /// is skipped, as a missing prior record is).
    pub(super) async fn remembered_opt_outs(
        &self,
        tenant: &Arc<Tenant>,
        items: &[(usize, Item)],
        prior: &HashMap<String, Recipient>,
    ) -> HashMap<String, Recipient> {
        use futures::StreamExt;
        use herald_proto::v1::{Channel, OptOutProof};
        let mut lookups = Vec::new();
        for (_, item) in items {
            let Item::Upsert(recipient) = item else {
                continue;
            };
            if prior.contains_key(&recipient.id) {
                continue;
            }
            for channel in [Channel::Push, Channel::Email, Channel::Sms] {
                for contact in ContactIndex::contacts(recipient, channel) {
                    lookups.push((
                        recipient.id.clone(),
                        self.contact_index.opt_out_key(&tenant.id, channel, contact),
                    ));
                }
            }
        }
        let store = &self.store;
        let found: Vec<(String, Option<Vec<u8>>)> = futures::stream::iter(lookups)
            .map(|(id, key)| async move { (id, store.get_value(&key).await.ok().flatten()) })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut remembered: HashMap<String, Recipient> = HashMap::new();
        for (id, bytes) in found {
            let Some(proof) =
                bytes.and_then(|b| <OptOutProof as prost::Message>::decode(b.as_slice()).ok())
            else {
                continue;
            };
            let ledger = remembered.entry(id).or_default();
            for entry in proof.consent {
                let known = ledger.consent.iter().any(|c| {
                    c.channel == entry.channel && c.topic == entry.topic && c.sender == entry.sender
                });
                if !known {
                    ledger.consent.push(entry);
                }
            }
        }
        remembered
    }

    /// Deletes index entry `key` if it still points at `recipient_id` (another recipient may
    /// have taken the number since).
    pub(super) async fn delete_index_entry(
        &self,
        key: &str,
        recipient_id: &str,
    ) -> Result<(), herald_store::Error> {
        if self.store.get_value(key).await?.as_deref() == Some(recipient_id.as_bytes()) {
            self.store.delete_values(&[key.to_owned()]).await?;
        }
        Ok(())
    }
}
