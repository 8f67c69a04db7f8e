//! Durable state in an embedded sled database: nodes, pods, events, join tokens
//! and the CA.
//!
//! Records are stored as their protobuf encoding: compact, and able to evolve
//! with the wire contract's field-numbering rules (new fields decode as defaults
//! from old records). Read-modify-write goes through [`Table::update`], which is
//! atomic per key. Whatever must survive a crash is followed by
//! [`Store::flush`] before it is acknowledged.
//!
//! [`Store::snapshot`] copies every tree at one instant, for backups: every
//! write goes through a [`Table`] method, which holds a shared gate for the
//! length of its one sled call, and the snapshot holds that gate alone while it
//! copies. sled itself has no snapshot reads (its iterators see concurrent
//! writes key by key, and its transactions cannot scan), so without the gate a
//! copy could hold a later write and miss an earlier one. [`Store::import`]
//! writes a snapshot into a new store.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

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

/// Shared by every write (for the length of one sled call), taken alone by
/// [`Store::snapshot`].
type Gate = Arc<RwLock<()>>;

/// One write to a [`Table`], as its watchers see it.
#[derive(Debug, Clone)]
pub struct Change<M> {
    /// The key written.
    pub key: String,
    /// The record now there; `None` once removed.
    pub record: Option<M>,
}

/// Changes kept for a watcher that has not read them yet; one that falls
/// further behind is told it lagged (and lists again) rather than slowing
/// writers down.
const WATCH_BUFFER: usize = 4096;

/// What a controller loop waits on between passes: any write to the pods or
/// the objects, or `tick` (a missed wake-up heals on the next one). Changes
/// queued meanwhile are dropped: the next pass reads the store anyway.
pub struct Wakeups {
    pods: tokio::sync::broadcast::Receiver<Change<pb::PodRecord>>,
    objects: tokio::sync::broadcast::Receiver<Change<pb::StoredObject>>,
    tick: std::time::Duration,
}

fn drain<T: Clone>(rx: &mut tokio::sync::broadcast::Receiver<T>) {
    use tokio::sync::broadcast::error::TryRecvError;
    while !matches!(
        rx.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
}

impl Wakeups {
    /// Wake-ups from `store`'s pods and objects, and every `tick`.
    pub fn new(store: &Store, tick: std::time::Duration) -> Self {
        Self {
            pods: store.pods.watch(),
            objects: store.objects.watch(),
            tick,
        }
    }

    /// Returns at the next change or tick.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.pods.recv() => {}
            _ = self.objects.recv() => {}
            () = tokio::time::sleep(self.tick) => {}
        }
        drain(&mut self.pods);
        drain(&mut self.objects);
    }
}

/// One keyspace of protobuf records.
#[derive(Clone)]
pub struct Table<M> {
    tree: sled::Tree,
    gate: Gate,
    /// Held from a write until its change is sent, so watchers see one key's
    /// changes in the order they were made.
    order: Arc<Mutex<()>>,
    changes: tokio::sync::broadcast::Sender<Change<M>>,
}

impl<M: Message + Default + Clone> Table<M> {
    fn open(db: &sled::Db, gate: &Gate, name: &str) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree(name).map_err(sled("open_tree"))?,
            gate: gate.clone(),
            order: Arc::default(),
            changes: tokio::sync::broadcast::channel(WATCH_BUFFER).0,
        })
    }

    /// Every write from now on (all keys; the watcher filters). Writes made
    /// by [`Store::import`] into a new store are not sent.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Change<M>> {
        self.changes.subscribe()
    }

    /// Held while writing: no snapshot is copied meanwhile; and the write's
    /// turn to tell watchers.
    fn writing(&self) -> (RwLockReadGuard<'_, ()>, MutexGuard<'_, ()>) {
        (
            self.gate.read().unwrap_or_else(PoisonError::into_inner),
            self.order.lock().unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn tell(&self, key: &str, record: Option<M>) {
        // No receiver is not an error: nobody watches.
        let _ = self.changes.send(Change {
            key: key.to_owned(),
            record,
        });
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
        let _writing = self.writing();
        self.tree
            .insert(key, record.encode_to_vec())
            .map_err(sled("insert"))?;
        self.tell(key, Some(record.clone()));
        Ok(())
    }

    /// Writes the record only if `key` is free; false when it was taken.
    pub fn create(&self, key: &str, record: &M) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let swapped = self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(record.encode_to_vec()))
            .map_err(sled("compare_and_swap"))?;
        if swapped.is_ok() {
            self.tell(key, Some(record.clone()));
        }
        Ok(swapped.is_ok())
    }

    /// Removes and returns the record at `key`.
    pub fn remove(&self, key: &str) -> Result<Option<M>, StoreError> {
        let removed = {
            let _writing = self.writing();
            let removed = self.tree.remove(key).map_err(sled("remove"))?;
            if removed.is_some() {
                self.tell(key, None);
            }
            removed
        };
        match removed {
            Some(v) => Ok(Some(Self::decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Atomically applies `f` to the record at `key` (if any) and returns the result.
    /// `f` may run more than once under contention; it must be pure.
    pub fn update(&self, key: &str, mut f: impl FnMut(&mut M)) -> Result<Option<M>, StoreError> {
        let mut corrupt = None;
        let writing = self.writing();
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
        let new = new.map(|v| Self::decode(key.as_bytes(), &v)).transpose()?;
        if let Some(record) = &new {
            self.tell(key, Some(record.clone()));
        }
        drop(writing);
        Ok(new)
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

pub use orca_model::records::{Snapshot, TreeSnapshot};

/// The control plane's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    gate: Gate,
    flushes: Arc<Flushes>,
    /// Event ids handed out from here on are at least this: above every
    /// stored event's, also in a store rebuilt by [`Store::import`], whose sled
    /// id generator starts again at zero.
    next_event: Arc<AtomicU64>,
    /// Nodes by name.
    pub nodes: Table<pb::Node>,
    /// Pods by `namespace/name`.
    pub pods: Table<pb::PodRecord>,
    /// Events by a time-ordered id.
    pub events: Table<pb::Event>,
    /// Join tokens by token.
    pub tokens: Table<JoinToken>,
    /// The CA (key `ca`).
    pub pki: Table<orca_model::records::CaRecord>,
    /// PersistentVolumeClaims by `namespace/name`.
    pub claims: Table<pb::Claim>,
    /// What pods in budgets cost, by `budget/uid`.
    pub spend: Table<pb::Spend>,
    /// Standalone-mode objects (Namespaces, ResourceQuotas, LimitRanges) by
    /// `Kind/namespace/name`.
    pub objects: Table<pb::StoredObject>,
    /// Named API tokens by the hex SHA-256 of their text (the control plane's `auth`).
    pub api_tokens: Table<orca_model::records::ApiToken>,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir).map_err(sled("open"))?;
        let gate = Gate::default();
        let store = Self {
            nodes: Table::open(&db, &gate, "nodes")?,
            pods: Table::open(&db, &gate, "pods")?,
            events: Table::open(&db, &gate, "events")?,
            tokens: Table::open(&db, &gate, "tokens")?,
            pki: Table::open(&db, &gate, "pki")?,
            claims: Table::open(&db, &gate, "claims")?,
            spend: Table::open(&db, &gate, "spend")?,
            objects: Table::open(&db, &gate, "objects")?,
            api_tokens: Table::open(&db, &gate, "api_tokens")?,
            db,
            gate,
            flushes: Arc::default(),
            next_event: Arc::default(),
        };
        store.raise_event_floor()?;
        Ok(store)
    }

    /// Makes the next event ids follow the last stored one.
    fn raise_event_floor(&self) -> Result<(), StoreError> {
        let last = self.events.tree.last().map_err(sled("last"))?;
        let next = last
            .and_then(|(k, _)| std::str::from_utf8(&k).ok()?.parse::<u64>().ok())
            .map_or(0, |id| id + 1);
        self.next_event.fetch_max(next, Ordering::SeqCst);
        Ok(())
    }

    /// Appends an event.
    pub fn add_event(&self, event: &pb::Event) -> Result<(), StoreError> {
        let generated = self.db.generate_id().map_err(sled("generate_id"))?;
        // The larger of sled's id and the floor; the floor moves past it.
        let floor = self
            .next_event
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |floor| {
                Some(floor.max(generated) + 1)
            })
            .unwrap_or_else(|floor| floor);
        let id = floor.max(generated);
        self.events.put(&format!("{id:020}"), event)
    }

    /// Every tree (sled's default one included), copied at one instant
    /// between writes: each write is wholly in it or not at all, every write
    /// that returned before the copy began is in it, and no later write is in
    /// it while an earlier one is missing. Writers wait while it copies (the
    /// whole store is held in memory; a few milliseconds for thousands of
    /// records).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let _alone = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let mut names = self.db.tree_names();
        names.sort();
        let trees = names
            .into_iter()
            .map(|name| {
                let tree = self.db.open_tree(&name).map_err(sled("open_tree"))?;
                let entries = tree
                    .iter()
                    .map(|kv| {
                        let (k, v) = kv.map_err(sled("scan"))?;
                        Ok((k.to_vec(), v.to_vec()))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(TreeSnapshot {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    entries,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Snapshot { trees })
    }

    /// Writes every tree of `snapshot` into this store (meant for a new, empty
    /// one: existing keys are overwritten, others kept) and makes it durable.
    /// Blocks on the flush: for offline use (restore), not on a runtime thread.
    pub fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        {
            let _alone = self.gate.write().unwrap_or_else(PoisonError::into_inner);
            for tree in &snapshot.trees {
                let target = self.db.open_tree(&tree.name).map_err(sled("open_tree"))?;
                let mut batch = sled::Batch::default();
                for (k, v) in &tree.entries {
                    batch.insert(k.as_slice(), v.as_slice());
                }
                target.apply_batch(batch).map_err(sled("apply_batch"))?;
            }
        }
        self.db.flush().map_err(sled("flush"))?;
        self.raise_event_floor()
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
        assert_eq!(reasons(&store), ["first", "second"]);
        assert_eq!(store.nodes.remove("a").unwrap().unwrap().name, "a");
        assert!(store.nodes.get("a").unwrap().is_none());
    }

    /// The reasons of the store's events, in order.
    fn reasons(store: &Store) -> Vec<String> {
        store
            .events
            .scan("")
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }

    fn event(reason: &str) -> pb::Event {
        pb::Event {
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_imports_into_a_new_store_whose_events_follow_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a")).unwrap();
        store
            .nodes
            .put(
                "n1",
                &pb::Node {
                    name: "n1".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        for reason in ["one", "two"] {
            store.add_event(&event(reason)).unwrap();
        }
        let snapshot = store.snapshot().unwrap();
        let names: Vec<&str> = snapshot.trees.iter().map(|t| t.name.as_str()).collect();
        for name in ["events", "nodes", "pki", "pods", "tokens"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }

        let copy = Store::open(&dir.path().join("b")).unwrap();
        copy.import(&snapshot).unwrap();
        assert_eq!(copy.snapshot().unwrap(), snapshot);
        assert_eq!(copy.nodes.get("n1").unwrap().unwrap().name, "n1");
        // The new store's sled id generator starts again at zero: an event
        // added now must neither overwrite nor sort before the restored ones.
        copy.add_event(&event("three")).unwrap();
        drop(copy);
        let reopened = Store::open(&dir.path().join("b")).unwrap();
        reopened.add_event(&event("four")).unwrap();
        assert_eq!(reasons(&reopened), ["one", "two", "three", "four"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_snapshot_taken_during_writes_holds_a_prefix_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // One writer puts 0, 1, 2, ... in order into two trees alternately; a
        // snapshot that holds key i in one tree holds every earlier write.
        let writer = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                for i in 0..2000u32 {
                    let key = format!("{i:05}");
                    if i % 2 == 0 {
                        store.nodes.put(&key, &pb::Node::default()).unwrap();
                    } else {
                        store.events.put(&key, &pb::Event::default()).unwrap();
                    }
                }
            })
        };
        let mut snapshots = Vec::new();
        while !writer.is_finished() {
            snapshots.push(store.snapshot().unwrap());
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        snapshots.push(store.snapshot().unwrap());
        for snapshot in snapshots {
            let mut written: Vec<u32> = snapshot
                .trees
                .iter()
                .filter(|t| t.name == "nodes" || t.name == "events")
                .flat_map(|t| &t.entries)
                .map(|(k, _)| std::str::from_utf8(k).unwrap().parse().unwrap())
                .collect();
            written.sort();
            let gap = written.iter().enumerate().find(|(i, k)| *i as u32 != **k);
            assert_eq!(
                gap,
                None,
                "a prefix of the writes: {} keys, the first out of place shown",
                written.len()
            );
        }
    }
}
