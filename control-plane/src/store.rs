//! Durable state in an embedded sled database: nodes, pods, events, join tokens
//! and the CA.
//!
//! Records are stored as their protobuf encoding: compact, and able to evolve
//! with the wire contract's field-numbering rules (new fields decode as defaults
//! from old records). Read-modify-write goes through [`Table::update`], which is
//! atomic per key. Whatever must survive a crash is followed by
//! [`Store::flush`] before it is acknowledged.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orca_proto::controlplane::v1 as pb;
use prost::Message;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("store {op} failed")]
    Sled {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: sled::Error,
    },
    /// A stored record does not decode.
    #[error("stored record {key:?} is corrupt")]
    Corrupt {
        /// Its key.
        key: String,
        /// Cause.
        #[source]
        source: prost::DecodeError,
    },
}

fn sled(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Sled { op, source }
}

/// One keyspace of protobuf records.
#[derive(Clone)]
pub struct Table<M> {
    tree: sled::Tree,
    _record: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Table<M> {
    fn open(db: &sled::Db, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree(name).map_err(sled("open_tree"))?,
            _record: PhantomData,
        })
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
        M::decode(bytes).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into(),
            source,
        })
    }

    /// The record at `key`.
    pub fn get(&self, key: &str) -> Result<Option<M>, StoreError> {
        match self.tree.get(key).map_err(sled("get"))? {
            Some(v) => Ok(Some(Self::decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Writes the record at `key`.
    pub fn put(&self, key: &str, record: &M) -> Result<(), StoreError> {
        self.tree
            .insert(key, record.encode_to_vec())
            .map_err(sled("insert"))?;
        Ok(())
    }

    /// Writes the record only if `key` is free; false when it was taken.
    pub fn create(&self, key: &str, record: &M) -> Result<bool, StoreError> {
        let swapped = self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(record.encode_to_vec()))
            .map_err(sled("compare_and_swap"))?;
        Ok(swapped.is_ok())
    }

    /// Removes and returns the record at `key`.
    pub fn remove(&self, key: &str) -> Result<Option<M>, StoreError> {
        match self.tree.remove(key).map_err(sled("remove"))? {
            Some(v) => Ok(Some(Self::decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Atomically applies `f` to the record at `key` (if any) and returns the result.
    /// `f` may run more than once under contention; it must be pure.
    pub fn update(&self, key: &str, mut f: impl FnMut(&mut M)) -> Result<Option<M>, StoreError> {
        let mut corrupt = None;
        let new = self
            .tree
            .update_and_fetch(key, |old| {
                let old = old?;
                match M::decode(old) {
                    Ok(mut record) => {
                        f(&mut record);
                        Some(record.encode_to_vec())
                    }
                    Err(e) => {
                        corrupt = Some(e);
                        Some(old.to_vec())
                    }
                }
            })
            .map_err(sled("update"))?;
        if let Some(source) = corrupt {
            return Err(StoreError::Corrupt {
                key: key.into(),
                source,
            });
        }
        new.map(|v| Self::decode(key.as_bytes(), &v)).transpose()
    }

    /// Every record with a key starting with `prefix`, with its key, in key order.
    pub fn entries(&self, prefix: &str) -> Result<Vec<(String, M)>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(sled("scan"))?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    Self::decode(&k, &v)?,
                ))
            })
            .collect()
    }

    /// Every record with a key starting with `prefix`, in key order.
    pub fn scan(&self, prefix: &str) -> Result<Vec<M>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(sled("scan"))?;
                Self::decode(&k, &v)
            })
            .collect()
    }
}

/// A join token as stored: which node it admits and until when.
#[derive(Clone, PartialEq, Message)]
pub struct JoinToken {
    /// Node the token is bound to.
    #[prost(string, tag = "1")]
    pub node_name: String,
    /// Expiry, seconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub expires_at: i64,
    /// Once used: the SHA-256 of the public key that used it (a join whose answer
    /// was lost may be repeated with that key, and only with it).
    #[prost(bytes = "vec", tag = "3")]
    pub used_by_key: Vec<u8>,
}

/// Flush tickets, for group commit.
#[derive(Default)]
struct Flushes {
    requested: AtomicU64,
    done: AtomicU64,
    turn: tokio::sync::Mutex<()>,
}

/// The control plane's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flushes: Arc<Flushes>,
    /// Nodes by name.
    pub nodes: Table<pb::Node>,
    /// Pods by `namespace/name`.
    pub pods: Table<pb::PodRecord>,
    /// Events by a time-ordered id.
    pub events: Table<pb::Event>,
    /// Join tokens by token.
    pub tokens: Table<JoinToken>,
    /// The CA (key `ca`).
    pub pki: Table<crate::pki::CaRecord>,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir).map_err(sled("open"))?;
        Ok(Self {
            nodes: Table::open(&db, "nodes")?,
            pods: Table::open(&db, "pods")?,
            events: Table::open(&db, "events")?,
            tokens: Table::open(&db, "tokens")?,
            pki: Table::open(&db, "pki")?,
            db,
            flushes: Arc::default(),
        })
    }

    /// Appends an event.
    pub fn add_event(&self, event: &pb::Event) -> Result<(), StoreError> {
        let id = self.db.generate_id().map_err(sled("generate_id"))?;
        self.events.put(&format!("{id:020}"), event)
    }

    /// Makes every write so far durable.
    ///
    /// Concurrent callers share flushes (group commit): each takes a ticket,
    /// and a flush that starts after a ticket was taken covers that caller's
    /// writes, so a burst of N callers costs about two fsyncs instead of N
    /// (100 pods at once waited 5 s for 200 serial fsyncs before). sled's own
    /// `flush_async` deadlocks when awaited concurrently (sled issues #1241,
    /// #1308: futures never woken), so the blocking flush runs on tokio's
    /// blocking pool.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.flushes.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.flushes.turn.lock().await;
        if self.flushes.done.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken after its caller's writes.
        let covers = self.flushes.requested.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Sled {
                op: "flush",
                source: sled::Error::ReportableBug(format!("flush task failed: {e}")),
            })?
            .map_err(sled("flush"))?;
        self.flushes.done.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let flushes = (0..200).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .nodes
                    .put(&format!("n{i}"), &pb::Node::default())
                    .unwrap();
                store.flush().await
            })
        });
        let all = futures::future::join_all(flushes);
        let done = tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("every flush completes (sled's flush_async would hang here)");
        assert!(done.into_iter().all(|r| r.unwrap().is_ok()));
        assert_eq!(store.nodes.scan("").unwrap().len(), 200);
    }

    #[tokio::test]
    async fn records_survive_reopen_and_update_atomically() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let node = pb::Node {
                name: "a".into(),
                pod_count: 1,
                ..Default::default()
            };
            assert!(store.nodes.create("a", &node).unwrap());
            assert!(
                !store.nodes.create("a", &node).unwrap(),
                "create refuses an existing key"
            );
            let updated = store
                .nodes
                .update("a", |n| n.pod_count += 1)
                .unwrap()
                .unwrap();
            assert_eq!(updated.pod_count, 2);
            assert!(
                store
                    .nodes
                    .update("missing", |n| n.pod_count += 1)
                    .unwrap()
                    .is_none()
            );
            store
                .add_event(&pb::Event {
                    reason: "first".into(),
                    ..Default::default()
                })
                .unwrap();
            store
                .add_event(&pb::Event {
                    reason: "second".into(),
                    ..Default::default()
                })
                .unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.nodes.get("a").unwrap().unwrap().pod_count, 2);
        let reasons: Vec<String> = store
            .events
            .scan("")
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["first", "second"]);
        assert_eq!(store.nodes.remove("a").unwrap().unwrap().name, "a");
        assert!(store.nodes.get("a").unwrap().is_none());
    }
}
