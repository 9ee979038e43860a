//! # store::embedded::state::records: hashes, lists and sorted sets
//!
//! Owns [`Records`], the embedded store's hashes (field → bytes; integers as decimal text, as
//! Redis keeps them), lists and sorted sets (members in byte order), each with its expiry, and
//! every rule of how they change: the reads, the checks of a `Require`, the resulting values
//! of an increment or a take (logged as absolute values, so replay just sets them), and the
//! log entries of their effects, applied through `State::apply` at runtime and on replay.
//!
//! An expired record is invisible at once and dropped lazily: by the sweep, or by the next
//! write that adds to it, which starts a new record without expiry (as in Redis). Both drops
//! are logged ([`DropRecords`]), so a replay never merges a write into a record that had
//! expired before it. Must never do I/O or wait, like the rest of the state, and never use the
//! state around it (the state uses this module, not the other way).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use herald_proto::TenantId;

use super::super::log::log_format::{
    AddMembers, DropRecords, Entry, ExpireRecords, Field, PushRecords, PutRecipient, RemoveMembers,
    SetFields,
};
use crate::{Check, Error, Result};

/// What kind of record a name stands for: one name may be a hash, a list and a sorted set at
/// once (as in Redis, whose keys differ by their `:h:`, `:l:`, `:z:` segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Hash,
    List,
    Set,
}

struct Record<T> {
    value: T,
    /// ms since the Unix epoch; 0 = never.
    expires_ms: u64,
}

impl<T> Record<T> {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms == 0 || self.expires_ms > now_ms
    }
}

/// The hashes, lists and sorted sets, by name.
#[derive(Default)]
pub(in crate::embedded) struct Records {
    hashes: HashMap<String, Record<HashMap<String, Vec<u8>>>>,
    lists: HashMap<String, Record<Vec<Vec<u8>>>>,
    sets: HashMap<String, Record<BTreeSet<String>>>,
}

/// Entries of one snapshot entry (a large record takes several).
const SNAPSHOT_CHUNK: usize = 4096;

/// A hash field as an integer the way Redis's `HINCRBY` reads it: an optional `-` and
/// decimal digits without a leading zero (or `0`), within `i64`.
fn parse_int(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = text == "0"
        || (digits.starts_with(|c: char| ('1'..='9').contains(&c))
            && digits.bytes().all(|b| b.is_ascii_digit()));
    if !canonical {
        return None;
    }
    text.parse().ok()
}

fn not_an_integer(key: &str, field: &str) -> Error {
    Error::Corrupt {
        key: key.to_owned(),
        reason: format!("hash field {field:?} is not an integer"),
    }
}

fn overflow(key: &str, field: &str) -> Error {
    Error::Corrupt {
        key: key.to_owned(),
        reason: format!("hash field {field:?} would overflow"),
    }
}

impl Records {
    fn hash(&self, key: &str, now_ms: u64) -> Option<&HashMap<String, Vec<u8>>> {
        self.hashes
            .get(key)
            .filter(|r| r.live(now_ms))
            .map(|r| &r.value)
    }

    fn list(&self, key: &str, now_ms: u64) -> Option<&Vec<Vec<u8>>> {
        self.lists
            .get(key)
            .filter(|r| r.live(now_ms))
            .map(|r| &r.value)
    }

    fn set(&self, key: &str, now_ms: u64) -> Option<&BTreeSet<String>> {
        self.sets
            .get(key)
            .filter(|r| r.live(now_ms))
            .map(|r| &r.value)
    }

    pub(in crate::embedded) fn fields(&self, key: &str, now_ms: u64) -> Vec<(String, Vec<u8>)> {
        self.hash(key, now_ms).map_or_else(Vec::new, |hash| {
            hash.iter().map(|(f, v)| (f.clone(), v.clone())).collect()
        })
    }

    pub(in crate::embedded) fn some_fields(
        &self,
        key: &str,
        fields: &[String],
        now_ms: u64,
    ) -> Vec<Option<Vec<u8>>> {
        let hash = self.hash(key, now_ms);
        fields
            .iter()
            .map(|field| hash.and_then(|h| h.get(field)).cloned())
            .collect()
    }

    pub(in crate::embedded) fn records(
        &self,
        key: &str,
        start: u64,
        count: u64,
        now_ms: u64,
    ) -> Vec<Vec<u8>> {
        let Some(list) = self.list(key, now_ms) else {
            return Vec::new();
        };
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        list.iter().skip(start).take(count).cloned().collect()
    }

    pub(in crate::embedded) fn record_count(&self, key: &str, now_ms: u64) -> u64 {
        self.list(key, now_ms).map_or(0, |list| list.len() as u64)
    }

    pub(in crate::embedded) fn members_after(
        &self,
        key: &str,
        after: Option<&str>,
        count: usize,
        now_ms: u64,
    ) -> Vec<String> {
        let Some(set) = self.set(key, now_ms) else {
            return Vec::new();
        };
        let from = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        set.range::<str, _>((from, Bound::Unbounded))
            .take(count)
            .cloned()
            .collect()
    }

    pub(in crate::embedded) fn member_count(&self, key: &str, now_ms: u64) -> u64 {
        self.set(key, now_ms).map_or(0, |set| set.len() as u64)
    }

    /// The record exists but has expired (not yet dropped).
    fn expired(&self, kind: Kind, name: &str, now_ms: u64) -> bool {
        match kind {
            Kind::Hash => self.hashes.get(name).is_some_and(|r| !r.live(now_ms)),
            Kind::List => self.lists.get(name).is_some_and(|r| !r.live(now_ms)),
            Kind::Set => self.sets.get(name).is_some_and(|r| !r.live(now_ms)),
        }
    }

    /// The record's expiry, when it exists and has one.
    pub(super) fn expires_ms(&self, kind: Kind, name: &str) -> Option<u64> {
        let expires = match kind {
            Kind::Hash => self.hashes.get(name).map(|r| r.expires_ms),
            Kind::List => self.lists.get(name).map(|r| r.expires_ms),
            Kind::Set => self.sets.get(name).map(|r| r.expires_ms),
        };
        expires.filter(|e| *e != 0)
    }

    /// The values `deltas` leave in the hash `key` (a missing field counts as 0; a field named
    /// twice adds up), in the order of their first mention.
    fn added(&self, key: &str, deltas: &[(String, i64)], now_ms: u64) -> Result<Vec<Field>> {
        let hash = self.hash(key, now_ms);
        let mut values: Vec<(String, i64)> = Vec::with_capacity(deltas.len());
        for (field, delta) in deltas {
            let at = match values.iter().position(|(f, _)| f == field) {
                Some(at) => at,
                None => {
                    let stored = match hash.and_then(|h| h.get(field)) {
                        Some(bytes) => {
                            parse_int(bytes).ok_or_else(|| not_an_integer(key, field))?
                        }
                        None => 0,
                    };
                    values.push((field.clone(), stored));
                    values.len() - 1
                }
            };
            let value = &mut values[at].1;
            *value = value
                .checked_add(*delta)
                .ok_or_else(|| overflow(key, field))?;
        }
        Ok(values
            .into_iter()
            .map(|(name, value)| Field {
                name,
                value: value.to_string().into_bytes(),
            })
            .collect())
    }

    fn set_fields(&mut self, key: String, fields: Vec<Field>) {
        if fields.is_empty() {
            return;
        }
        let hash = &mut self
            .hashes
            .entry(key)
            .or_insert_with(|| Record {
                value: HashMap::new(),
                expires_ms: 0,
            })
            .value;
        for Field { name, value } in fields {
            hash.insert(name, value);
        }
    }

    fn push(&mut self, key: String, records: Vec<Vec<u8>>) {
        if records.is_empty() {
            return;
        }
        self.lists
            .entry(key)
            .or_insert_with(|| Record {
                value: Vec::new(),
                expires_ms: 0,
            })
            .value
            .extend(records);
    }

    fn add_members(&mut self, key: String, members: Vec<String>) {
        if members.is_empty() {
            return;
        }
        self.sets
            .entry(key)
            .or_insert_with(|| Record {
                value: BTreeSet::new(),
                expires_ms: 0,
            })
            .value
            .extend(members);
    }

    /// Removes members; an emptied set is deleted (with its expiry), as in Redis.
    fn remove_members(&mut self, key: &str, members: &[String]) {
        let Some(set) = self.sets.get_mut(key) else {
            return;
        };
        for member in members {
            set.value.remove(member);
        }
        if set.value.is_empty() {
            self.sets.remove(key);
        }
    }

    /// Sets the expiry of a record; false when it does not exist.
    pub(super) fn set_expiry(&mut self, kind: Kind, name: &str, expires_ms: u64) -> bool {
        let expires = match kind {
            Kind::Hash => self.hashes.get_mut(name).map(|r| &mut r.expires_ms),
            Kind::List => self.lists.get_mut(name).map(|r| &mut r.expires_ms),
            Kind::Set => self.sets.get_mut(name).map(|r| &mut r.expires_ms),
        };
        match expires {
            Some(expires) => {
                *expires = expires_ms;
                true
            }
            None => false,
        }
    }

    /// A recipient joins its partition's recipient index.
    pub(super) fn index_recipient(&mut self, tenant: &str, partition: u32, id: String) {
        self.add_members(recipient_index(tenant, partition), vec![id]);
    }

    /// A recipient leaves its partition's recipient index.
    pub(super) fn unindex_recipient(&mut self, tenant: &str, partition: u32, id: &str) {
        self.remove_members(&recipient_index(tenant, partition), &[id.to_owned()]);
    }

    pub(super) fn remove(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Hash => self.hashes.remove(name).map(|_| ()),
            Kind::List => self.lists.remove(name).map(|_| ()),
            Kind::Set => self.sets.remove(name).map(|_| ()),
        };
    }

    /// The live records as log entries (compaction): contents in chunks, then expiries.
    pub(super) fn snapshot(&self, now_ms: u64, entries: &mut Vec<Entry>) {
        let mut expiring: Vec<ExpireRecords> = Vec::new();
        let mut expire = |kind: Kind, name: &str, expires_ms: u64| {
            if expires_ms == 0 {
                return;
            }
            let mut entry = ExpireRecords {
                expires_unix_ms: expires_ms,
                ..Default::default()
            };
            match kind {
                Kind::Hash => entry.hashes.push(name.to_owned()),
                Kind::List => entry.lists.push(name.to_owned()),
                Kind::Set => entry.sets.push(name.to_owned()),
            }
            expiring.push(entry);
        };
        for (key, record) in self.hashes.iter().filter(|(_, r)| r.live(now_ms)) {
            let fields: Vec<Field> = record
                .value
                .iter()
                .map(|(name, value)| Field {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect();
            for chunk in fields.chunks(SNAPSHOT_CHUNK) {
                entries.push(Entry::SetFields(SetFields {
                    key: key.clone(),
                    fields: chunk.to_vec(),
                }));
            }
            expire(Kind::Hash, key, record.expires_ms);
        }
        for (key, record) in self.lists.iter().filter(|(_, r)| r.live(now_ms)) {
            for chunk in record.value.chunks(SNAPSHOT_CHUNK) {
                entries.push(Entry::PushRecords(PushRecords {
                    key: key.clone(),
                    records: chunk.to_vec(),
                }));
            }
            expire(Kind::List, key, record.expires_ms);
        }
        for (key, record) in self.sets.iter().filter(|(_, r)| r.live(now_ms)) {
            let members: Vec<String> = record.value.iter().cloned().collect();
            for chunk in members.chunks(SNAPSHOT_CHUNK) {
                entries.push(Entry::AddMembers(AddMembers {
                    key: key.clone(),
                    members: chunk.to_vec(),
                }));
            }
            expire(Kind::Set, key, record.expires_ms);
        }
        entries.extend(expiring.into_iter().map(Entry::ExpireRecords));
    }
}

/// The name of a tenant's recipient index of one partition.
fn recipient_index(tenant: &str, partition: u32) -> String {
    crate::keys::value::partition_recipients(&TenantId(tenant.to_owned()), partition)
}

impl Records {
    /// Applies an entry about hashes, lists or sorted sets (the record part of
    /// `State::apply`; expiries are the state's, which tracks them for the sweep).
    pub(super) fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::SetFields(SetFields { key, fields }) => self.set_fields(key, fields),
            Entry::PushRecords(PushRecords { key, records }) => self.push(key, records),
            Entry::AddMembers(AddMembers { key, members }) => self.add_members(key, members),
            Entry::RemoveMembers(RemoveMembers { key, members }) => {
                self.remove_members(&key, &members);
            }
            Entry::DropRecords(DropRecords {
                hashes,
                lists,
                sets,
            }) => {
                let named = [(Kind::Hash, hashes), (Kind::List, lists), (Kind::Set, sets)];
                for (kind, names) in named {
                    for name in names {
                        self.remove(kind, &name);
                    }
                }
            }
            _ => {}
        }
    }

    /// The drop to log and apply before `entry` adds to a record that has expired (so the
    /// write starts a new record without expiry, as in Redis); `None` for most entries.
    pub(super) fn drop_before(&self, entry: &Entry, now_ms: u64) -> Option<DropRecords> {
        let (kind, name) = match entry {
            Entry::SetFields(SetFields { key, .. }) => (Kind::Hash, key.clone()),
            Entry::PushRecords(PushRecords { key, .. }) => (Kind::List, key.clone()),
            Entry::AddMembers(AddMembers { key, .. }) => (Kind::Set, key.clone()),
            Entry::PutRecipient(PutRecipient {
                tenant,
                index_partition: Some(partition),
                ..
            }) => (Kind::Set, recipient_index(tenant, *partition)),
            _ => return None,
        };
        if !self.expired(kind, &name, now_ms) {
            return None;
        }
        let mut drop = DropRecords::default();
        match kind {
            Kind::Hash => drop.hashes.push(name),
            Kind::List => drop.lists.push(name),
            Kind::Set => drop.sets.push(name),
        }
        Some(drop)
    }

    /// How many of `members` are not in the live set `key` (duplicates counted once).
    pub(super) fn new_members(&self, key: &str, members: &[String], now_ms: u64) -> i64 {
        let set = self.set(key, now_ms);
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        members
            .iter()
            .filter(|m| set.is_none_or(|s| !s.contains(*m)) && seen.insert(m.as_str()))
            .count() as i64
    }

    /// The effect of adding `deltas` to the hash `key`: its resulting values (`None` when
    /// there are no deltas: no hash is made).
    pub(super) fn add_fields(
        &self,
        key: String,
        deltas: &[(String, i64)],
        now_ms: u64,
    ) -> Result<Option<Entry>> {
        if deltas.is_empty() {
            return Ok(None);
        }
        let fields = self.added(&key, deltas, now_ms)?;
        Ok(Some(Entry::SetFields(SetFields { key, fields })))
    }

    /// Whether a `Require`'s check holds, and for a take that holds the effect that takes
    /// the amount (none for a take of 0: nothing changes, as in the write script).
    pub(super) fn check(&self, check: Check, now_ms: u64) -> Result<(bool, Option<Entry>)> {
        match check {
            Check::FieldIs { key, field, value } => {
                let stored = self.hash(&key, now_ms).and_then(|h| h.get(&field));
                Ok((stored == Some(&value), None))
            }
            Check::Missing { key, field } => {
                let stored = self.hash(&key, now_ms).and_then(|h| h.get(&field));
                Ok((stored.is_none(), None))
            }
            Check::Take { key, field, amount } => {
                let have = match self.hash(&key, now_ms).and_then(|h| h.get(&field)) {
                    Some(bytes) => parse_int(bytes).ok_or_else(|| not_an_integer(&key, &field))?,
                    None => 0,
                };
                if have < amount {
                    return Ok((false, None));
                }
                if amount == 0 {
                    return Ok((true, None));
                }
                let delta = amount.checked_neg().ok_or_else(|| overflow(&key, &field))?;
                Ok((true, self.add_fields(key, &[(field, delta)], now_ms)?))
            }
        }
    }

    /// The entry that gives the live records named `names` (every kind) the expiry
    /// `expires_ms`; `None` when none of them exists.
    pub(super) fn expiring(
        &self,
        names: &[String],
        expires_ms: u64,
        now_ms: u64,
    ) -> Option<ExpireRecords> {
        let mut entry = ExpireRecords {
            expires_unix_ms: expires_ms,
            ..Default::default()
        };
        for name in names {
            if self.hash(name, now_ms).is_some() {
                entry.hashes.push(name.clone());
            }
            if self.list(name, now_ms).is_some() {
                entry.lists.push(name.clone());
            }
            if self.set(name, now_ms).is_some() {
                entry.sets.push(name.clone());
            }
        }
        let none = entry.hashes.is_empty() && entry.lists.is_empty() && entry.sets.is_empty();
        (!none).then_some(entry)
    }
}

#[cfg(test)]
mod unit {
    use super::parse_int;

    #[test]
    fn integers_read_as_hincrby_reads_them() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"42"), Some(42));
        assert_eq!(parse_int(b"-7"), Some(-7));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for text in [
            &b"042"[..],
            b"-0",
            b"+1",
            b" 1",
            b"1 ",
            b"",
            b"-",
            b"1e3",
            b"9223372036854775808",
            b"\xff",
        ] {
            assert_eq!(parse_int(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }
}
