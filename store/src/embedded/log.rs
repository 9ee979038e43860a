//! # store::embedded::log: the append-only log on disk
//!
//! Owns the embedded store's file format and everything that touches the file: the record
//! format ([`log_format`]), the framing (`[u32 LE payload length][u32 LE FNV-1a-32][payload]`),
//! [`replay`] of a log into whatever applies its entries, [`compact`] (a log rewritten as a
//! snapshot), and [`Log`]: the open file, the flusher that writes and syncs queued records,
//! and the durability status callers wait on. The format and its guarantees are described in
//! the docs of `store::embedded` ("The log").
//!
//! It must never decide what goes into a record or touch the in-memory state: the store
//! builds the records and applies the entries; this module only frames, writes, syncs and
//! reads them back. Never write after a failed write (memory and disk have diverged), and never
//! skip a damaged record that is followed by good data.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use herald_proto::partition::fnv1a32;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::watch;

use crate::{Error, Result};

use log_format::{Entry, LogEntry, LogRecord};

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "herald-store.log";
const HEADER_LEN: usize = 8;
/// Larger records are treated as damage: no call writes that much at once.
const MAX_RECORD_LEN: usize = 256 << 20;
/// Logs smaller than this are never compacted (not worth a rewrite at every start).
const COMPACT_MIN_BYTES: u64 = 8 << 20;

/// The log's record format. Public for tools that inspect a data directory.
pub mod log_format {
    use herald_proto::v1::{Event, Recipient, StoredMessage};

    /// One log record: the effects of one call, applied in order on replay.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<LogEntry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogEntry {
        // Every tag of `Entry`: prost decodes only the listed ones (an unlisted tag would be
        // skipped on replay as an unknown field).
        #[prost(
            oneof = "Entry",
            tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
        )]
        pub entry: Option<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    #[expect(
        clippy::large_enum_variant,
        reason = "log entries live briefly, one at a time; boxing the message would add an allocation per accept"
    )]
    pub enum Entry {
        #[prost(message, tag = "1")]
        PutRecipient(PutRecipient),
        #[prost(message, tag = "2")]
        EraseRecipient(EraseRecipient),
        #[prost(message, tag = "3")]
        Accept(Accept),
        #[prost(message, tag = "4")]
        Append(Append),
        #[prost(message, tag = "5")]
        SetCounter(SetCounter),
        #[prost(message, tag = "6")]
        SetFence(SetFence),
        #[prost(message, tag = "7")]
        PutBlob(PutBlob),
        #[prost(message, tag = "8")]
        PutApiKey(PutApiKey),
        /// Snapshot only: a message without its events.
        #[prost(message, tag = "9")]
        PutMessage(PutMessage),
        /// Snapshot only: a live idempotency key.
        #[prost(message, tag = "10")]
        PutIdempotency(PutIdempotency),
        #[prost(message, tag = "11")]
        PutValue(PutValue),
        /// Redacts a recipient's messages (erasure).
        #[prost(message, tag = "12")]
        Redact(Redact),
        /// Deletes expiring values.
        #[prost(message, tag = "13")]
        DeleteValues(DeleteValues),
        /// Sets fields of a hash (an increment or a take is logged as the resulting value).
        #[prost(message, tag = "14")]
        SetFields(SetFields),
        /// Appends records to a list.
        #[prost(message, tag = "15")]
        PushRecords(PushRecords),
        /// Adds members to a sorted set.
        #[prost(message, tag = "16")]
        AddMembers(AddMembers),
        /// Removes members from a sorted set.
        #[prost(message, tag = "17")]
        RemoveMembers(RemoveMembers),
        /// Gives hashes, lists and sorted sets an expiry.
        #[prost(message, tag = "18")]
        ExpireRecords(ExpireRecords),
        /// Deletes hashes, lists and sorted sets that expired (before a write recreates one,
        /// or when the sweep removes it).
        #[prost(message, tag = "19")]
        DropRecords(DropRecords),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Field {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetFields {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, repeated, tag = "2")]
        pub fields: Vec<Field>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRecords {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub records: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AddMembers {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, repeated, tag = "2")]
        pub members: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RemoveMembers {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, repeated, tag = "2")]
        pub members: Vec<String>,
    }

    /// Records by kind (the names their ops gave them): a name may be a hash, a list and a
    /// sorted set at once, each its own record.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExpireRecords {
        #[prost(string, repeated, tag = "1")]
        pub hashes: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub lists: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub sets: Vec<String>,
        /// ms since the Unix epoch.
        #[prost(uint64, tag = "4")]
        pub expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DropRecords {
        #[prost(string, repeated, tag = "1")]
        pub hashes: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub lists: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub sets: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Redact {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub recipient_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteValues {
        #[prost(string, repeated, tag = "1")]
        pub keys: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRecipient {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(message, optional, tag = "2")]
        pub recipient: Option<Recipient>,
        /// The partition whose recipient index the recipient joins (none: in a snapshot,
        /// whose sorted sets hold the indexes, and in logs written before there were any).
        #[prost(uint32, optional, tag = "3")]
        pub index_partition: Option<u32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EraseRecipient {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub recipient_id: String,
        /// The partition whose recipient index the recipient leaves.
        #[prost(uint32, optional, tag = "3")]
        pub index_partition: Option<u32>,
    }

    /// An accepted message: its idempotency key (from the request) until the expiry, the
    /// message, its `accepted` event, and membership of the partition's active set.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Accept {
        #[prost(message, optional, tag = "1")]
        pub message: Option<StoredMessage>,
        #[prost(message, optional, tag = "2")]
        pub accepted: Option<Event>,
        #[prost(uint32, tag = "3")]
        pub partition: u32,
        #[prost(uint64, tag = "4")]
        pub idempotency_expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Append {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub message_id: String,
        #[prost(message, repeated, tag = "3")]
        pub events: Vec<Event>,
        /// Removes the message from `partition`'s active set.
        #[prost(bool, tag = "4")]
        pub terminal: bool,
        #[prost(uint32, tag = "5")]
        pub partition: u32,
        /// When the message and its log expire (ms since the Unix epoch; 0 = never).
        #[prost(uint64, tag = "6")]
        pub expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetCounter {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(int64, tag = "2")]
        pub value: i64,
        #[prost(uint64, tag = "3")]
        pub expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetFence {
        #[prost(uint32, tag = "1")]
        pub partition: u32,
        #[prost(uint64, tag = "2")]
        pub epoch: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutBlob {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutApiKey {
        #[prost(string, tag = "1")]
        pub key_sha256_hex: String,
        #[prost(string, tag = "2")]
        pub tenant: String,
        /// The key's record (absent in logs written before keys had ids: lookup only).
        #[prost(message, optional, tag = "3")]
        pub record: Option<crate::ApiKeyRecord>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutMessage {
        #[prost(message, optional, tag = "1")]
        pub message: Option<StoredMessage>,
        /// The partition whose active set holds the message (none: terminal).
        #[prost(uint32, optional, tag = "2")]
        pub active_partition: Option<u32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutIdempotency {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub key: String,
        #[prost(string, tag = "3")]
        pub message_id: String,
        #[prost(fixed64, tag = "4")]
        pub payload_hash: u64,
        #[prost(uint64, tag = "5")]
        pub expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(uint64, tag = "3")]
        pub expires_unix_ms: u64,
    }
}

/// The open log: the file the flusher appends to and the durability status callers wait on.
pub(super) struct Log {
    pub(super) path: PathBuf,
    /// Only the (single) flusher writes; the mutex just makes that visible to the compiler.
    file: Mutex<File>,
    status: watch::Sender<LogStatus>,
}

#[derive(Clone, Debug, Default)]
struct LogStatus {
    /// Sequence number of the last record synced to disk.
    durable: u64,
    /// Set once a flush failed; no record after it will ever be durable.
    failed: Option<String>,
}

impl Log {
    /// Opens `path` (in `dir`) for appending, first cutting it to `cut_to` bytes when given (a
    /// torn tail, so new records follow the last good one).
    pub(super) fn open(dir: &Path, path: PathBuf, cut_to: Option<u64>) -> Result<Log> {
        if let Some(good) = cut_to {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(good)?;
            file.sync_all()?;
        }
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !existed {
            sync_dir(dir);
        }
        let (status, _) = watch::channel(LogStatus::default());
        Ok(Log {
            path,
            file: Mutex::new(file),
            status,
        })
    }

    /// The flusher (runs on a blocking thread, at most one at a time): writes and syncs what
    /// `take` hands over (queued records and the sequence number of the last) with one `write`
    /// and one `fdatasync`, until `take` hands over nothing. After a failed write it calls
    /// `poison` and stops for good: nothing more is written after a failed record.
    pub(super) fn flush_loop(
        &self,
        mut take: impl FnMut() -> Option<(Vec<Vec<u8>>, u64)>,
        poison: impl FnOnce(String),
    ) {
        while let Some((records, upto)) = take() {
            let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + HEADER_LEN).sum());
            for record in &records {
                frame(record, &mut out);
            }
            let written = {
                let mut file = self.file.lock();
                file.write_all(&out).and_then(|()| file.sync_data())
            };
            match written {
                Ok(()) => self.status.send_modify(|s| s.durable = upto),
                Err(e) => {
                    let reason = format!("{}: {e}", self.path.display());
                    tracing::error!(%reason, "embedded store: log write failed; refusing writes");
                    // The store stays marked as flushing: no flusher starts after this one.
                    poison(reason.clone());
                    self.status.send_modify(|s| s.failed = Some(reason));
                    return;
                }
            }
        }
    }

    /// Waits until record `seq` is durable (0: nothing to wait for), or fails once a flush
    /// failed before it.
    pub(super) async fn wait_durable(&self, seq: u64) -> Result<()> {
        if seq == 0 {
            return Ok(());
        }
        let mut rx = self.status.subscribe();
        let status = rx
            .wait_for(|s| s.durable >= seq || s.failed.is_some())
            .await
            .map_err(|_| Error::Closed)?;
        if status.durable >= seq {
            Ok(())
        } else {
            Err(Error::Io(std::io::Error::other(format!(
                "store log write failed: {}",
                status.failed.as_deref().unwrap_or("unknown")
            ))))
        }
    }
}

/// The log's bytes (none when there is no log yet).
pub(super) fn read(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites a log of `log_len` bytes, `good` of them replayed, as the records `snapshot` gives
/// (temp file, fsync, rename), when the log is at least [`COMPACT_MIN_BYTES`] and more than
/// twice the snapshot's size. Returns whether it did.
pub(super) fn compact(
    dir: &Path,
    path: &Path,
    log_len: usize,
    good: usize,
    snapshot: impl FnOnce() -> Vec<Vec<u8>>,
) -> Result<bool> {
    if (log_len as u64) < COMPACT_MIN_BYTES {
        return Ok(false);
    }
    let mut framed = Vec::new();
    for record in &snapshot() {
        frame(record, &mut framed);
    }
    if framed.len() * 2 >= good {
        return Ok(false);
    }
    let tmp = dir.join(format!("{LOG_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&framed)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir);
    Ok(true)
}

/// Encodes one effect as a one-entry [`LogRecord`] and hands the entry back. Encoded records
/// concatenate into a valid record (protobuf merges repeated fields), so a call's record is
/// the concatenation of its applied ops' encodings: built outside the lock, copied inside.
pub(super) fn encode_entry(entry: Entry) -> (Entry, Vec<u8>) {
    let mut record = LogRecord {
        entries: vec![LogEntry { entry: Some(entry) }],
    };
    let encoded = record.encode_to_vec();
    match record.entries.pop().and_then(|e| e.entry) {
        Some(entry) => (entry, encoded),
        // We just put it there.
        None => unreachable!("encode_entry lost its entry"),
    }
}

/// Appends one framed record to `out`.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    // Callers refuse records over MAX_RECORD_LEN (see `check_record_len`), so this never
    // saturates; if it did, replay would see damage rather than a wrong length.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&fnv1a32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

/// Replays `bytes`, handing every entry to `apply` in order. Returns the length of the good prefix (shorter than `bytes`
/// when a torn final record was found).
pub(super) fn replay(bytes: &[u8], path: &Path, mut apply: impl FnMut(Entry)) -> Result<usize> {
    let corrupt = |at: usize, reason: String| Error::Corrupt {
        key: format!("{}@{at}", path.display()),
        reason,
    };
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn_tail = || rest.iter().all(|b| *b == 0);
        let (Some(len), Some(sum)) = (read_u32(bytes, at), read_u32(bytes, at + 4)) else {
            return Ok(at); // a header cut short: torn
        };
        let len = len as usize;
        let end = at + HEADER_LEN + len;
        if end > bytes.len() {
            return Ok(at); // a payload cut short: torn
        }
        let payload = &bytes[at + HEADER_LEN..end];
        if len == 0 || len > MAX_RECORD_LEN || fnv1a32(payload) != sum {
            if end == bytes.len() || torn_tail() {
                return Ok(at);
            }
            return Err(corrupt(at, "bad record followed by more data".to_owned()));
        }
        let record = LogRecord::decode(payload).map_err(|e| corrupt(at, e.to_string()))?;
        for entry in record.entries.into_iter().filter_map(|e| e.entry) {
            apply(entry);
        }
        at = end;
    }
    Ok(at)
}

/// fsyncs a directory so a created or renamed file's name is durable. Best effort: some
/// platforms cannot open directories; the data itself is synced separately.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Refuses a call whose log record could exceed [`MAX_RECORD_LEN`] *before* it changes
/// anything: replay treats larger records as damage.
pub(super) fn check_record_len(upper_bound: usize) -> Result<()> {
    if upper_bound > MAX_RECORD_LEN {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a write of about {upper_bound} bytes exceeds the store log's record limit of \
                 {MAX_RECORD_LEN} bytes; split it"
            ),
        )));
    }
    Ok(())
}
