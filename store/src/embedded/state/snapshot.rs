//! The snapshot of the embedded store: every durable record as log entries, so that a
//! compacted log replays to the same state. Must never write what expired, nor a lease.

use super::*;

impl State {
    /// The whole durable state as log records (compaction).
    pub(in crate::embedded) fn snapshot(&self, now_ms: u64) -> Vec<Vec<u8>> {
        let mut entries: Vec<Entry> = Vec::new();
        for (&partition, &epoch) in &self.fences {
            entries.push(Entry::SetFence(SetFence { partition, epoch }));
        }
        for (tenant, recipients) in &self.recipients {
            for recipient in recipients.values() {
                // The recipient indexes are sorted sets: in the snapshot with the others.
                entries.push(Entry::PutRecipient(PutRecipient {
                    tenant: tenant.clone(),
                    recipient: Some(recipient.clone()),
                    index_partition: None,
                }));
            }
        }
        let mut active_in: HashMap<(&str, &str), u32> = HashMap::new();
        for (&partition, members) in &self.active {
            for (tenant, id) in members {
                active_in.insert((tenant.as_str(), id.as_str()), partition);
            }
        }
        for (tenant, messages) in &self.messages {
            for (id, message) in messages {
                entries.push(Entry::PutMessage(PutMessage {
                    message: Some(message.clone()),
                    active_partition: active_in.get(&(tenant.as_str(), id.as_str())).copied(),
                }));
            }
        }
        for (tenant, logs) in &self.events {
            for (id, events) in logs {
                entries.push(Entry::Append(Append {
                    tenant: tenant.clone(),
                    message_id: id.clone(),
                    events: events.clone(),
                    terminal: false,
                    partition: 0,
                    expires_unix_ms: self
                        .message_expiry
                        .get(&(tenant.clone(), id.clone()))
                        .copied()
                        .unwrap_or(0),
                }));
            }
        }
        for (tenant, keys) in &self.idempotency {
            for (key, record) in keys {
                if record.expires_ms > now_ms {
                    entries.push(Entry::PutIdempotency(PutIdempotency {
                        tenant: tenant.clone(),
                        key: key.clone(),
                        message_id: record.message_id.clone(),
                        payload_hash: record.payload_hash,
                        expires_unix_ms: record.expires_ms,
                    }));
                }
            }
        }
        for (key, counter) in &self.counters {
            if counter.expires_ms > now_ms {
                entries.push(Entry::SetCounter(SetCounter {
                    key: key.clone(),
                    value: counter.value,
                    expires_unix_ms: counter.expires_ms,
                }));
            }
        }
        for (key, (value, expires_unix_ms)) in &self.values {
            if *expires_unix_ms > now_ms {
                entries.push(Entry::PutValue(PutValue {
                    key: key.clone(),
                    value: value.clone(),
                    expires_unix_ms: *expires_unix_ms,
                }));
            }
        }
        for (name, value) in &self.blobs {
            entries.push(Entry::PutBlob(PutBlob {
                name: name.clone(),
                value: value.clone(),
            }));
        }
        for (key_sha256_hex, tenant) in &self.api_keys {
            let recorded = self
                .api_key_records
                .values()
                .any(|r| &r.key_sha256_hex == key_sha256_hex);
            if !recorded {
                entries.push(Entry::PutApiKey(PutApiKey {
                    key_sha256_hex: key_sha256_hex.clone(),
                    tenant: tenant.clone(),
                    record: None,
                }));
            }
        }
        for record in self.api_key_records.values() {
            entries.push(Entry::PutApiKey(PutApiKey {
                key_sha256_hex: record.key_sha256_hex.clone(),
                tenant: record.tenant.clone(),
                record: Some(record.clone()),
            }));
        }
        self.records.snapshot(now_ms, &mut entries);
        let mut records = Vec::new();
        let mut record = Vec::new();
        for entry in entries {
            let (_, encoded) = encode_entry(entry);
            record.extend_from_slice(&encoded);
            if record.len() >= SNAPSHOT_RECORD_BYTES {
                records.push(std::mem::take(&mut record));
            }
        }
        if !record.is_empty() {
            records.push(record);
        }
        records
    }
}
