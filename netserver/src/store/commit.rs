//! The group-committing store: a [`SessionBackend`] on its own thread. Writes queued while a
//! commit is in progress go into the next transaction together, so durability costs one flush
//! per batch, not per join. `put(...).await` resolves once the write is durable.
//!
//! Commits are paced ([`GroupCommit::min_interval`]): a write arriving sooner than that after
//! the previous commit began waits for the rest of the interval and shares the next commit. In
//! a join storm that turns hundreds of small commits a second (each a flush and an `fdatasync`,
//! which the profile showed as a third of the network server's CPU per join) into a few large
//! ones; a write after a quiet spell commits at once, so a lone join pays nothing.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::ids::DevEui;
use tokio::sync::{mpsc, oneshot};

use crate::ops::metrics::Metrics;
use crate::store::backend::{Restored, SessionBackend, StoreError, WriteOp};
use crate::store::embedded::backend_err;
use crate::store::stored::StoredSession;

type Ack = oneshot::Sender<Result<(), Arc<StoreError>>>;

enum Job {
    /// Writes committed together.
    Write(Vec<WriteOp>, Ack),
    /// Resolves once everything queued before it is committed.
    Flush(Ack),
}

/// The group-committing handle on a backend running on its own thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionStore {
    tx: mpsc::Sender<Job>,
}

/// How writes are grouped into commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Most writes in one commit.
    pub max_batch: usize,
    /// Least time from one commit's start to the next's (zero: commit whenever writes wait).
    pub min_interval: Duration,
}

impl GroupCommit {
    /// Commits of up to `max_batch` writes, unpaced.
    pub fn unpaced(max_batch: usize) -> Self {
        Self {
            max_batch,
            min_interval: Duration::ZERO,
        }
    }
}

/// Owns the store thread; [`StoreThread::join`] waits for it after every handle is dropped.
#[derive(Debug)]
pub struct StoreThread(JoinHandle<()>);

impl StoreThread {
    /// Waits for the store thread to commit what is queued and exit (after every
    /// [`SessionStore`] handle is dropped).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl SessionStore {
    /// Loads the current sessions from `backend`, then starts the commit thread. `max_batch`
    /// bounds a group commit. For tools and tests; the server uses [`Self::start_all`].
    pub fn start<B: SessionBackend>(
        backend: B,
        max_batch: usize,
        metrics: Metrics,
    ) -> Result<(Self, Vec<StoredSession>, StoreThread), StoreError> {
        let (store, restored, thread) =
            Self::start_all(backend, GroupCommit::unpaced(max_batch), metrics)?;
        Ok((store, restored.current, thread))
    }

    /// Loads every session, current and replaced, from `backend`, then starts the commit
    /// thread, grouping writes as `group` says.
    pub fn start_all<B: SessionBackend>(
        mut backend: B,
        group: GroupCommit,
        metrics: Metrics,
    ) -> Result<(Self, Restored, StoreThread), StoreError> {
        let loaded = Restored {
            current: backend.load_all()?,
            previous: backend.load_previous()?,
        };
        let group = GroupCommit {
            max_batch: group.max_batch.max(1),
            ..group
        };
        let (tx, rx) = mpsc::channel(group.max_batch * 4);
        let handle = std::thread::Builder::new()
            .name("netserver-store".into())
            .spawn(move || commit_loop(backend, rx, group, metrics))
            .map_err(backend_err)?;
        Ok((Self { tx }, loaded, StoreThread(handle)))
    }

    async fn submit(&self, make: impl FnOnce(Ack) -> Job) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(make(ack))
            .await
            .map_err(|_| StoreError::Closed)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e.to_string())),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Stores a session; resolves once it is durable.
    pub async fn put(&self, s: StoredSession) -> Result<(), StoreError> {
        self.submit(|ack| Job::Write(vec![WriteOp::Put(Box::new(s))], ack))
            .await
    }

    /// Stores a new session and the session it replaces, kept until the first uplink under
    /// the new one, in one commit; resolves once both are durable.
    pub async fn put_replacing(
        &self,
        s: StoredSession,
        replaced: StoredSession,
    ) -> Result<(), StoreError> {
        let ops = vec![
            WriteOp::Put(Box::new(s)),
            WriteOp::PutPrevious(Box::new(replaced)),
        ];
        self.submit(|ack| Job::Write(ops, ack)).await
    }

    /// Stores the device's replaced session again (its record changed: a rejoin accepted under
    /// it); resolves once durable.
    pub async fn put_previous(&self, replaced: StoredSession) -> Result<(), StoreError> {
        self.submit(|ack| Job::Write(vec![WriteOp::PutPrevious(Box::new(replaced))], ack))
            .await
    }

    /// Queues the removal of the device's replaced session without waiting (the data path
    /// never waits for storage). If it is lost in a crash, the restart drops the replaced
    /// session anyway, since its successor's counters show it in use.
    pub fn forget_previous(&self, dev_eui: DevEui) {
        let (ack, _) = oneshot::channel();
        let op = vec![WriteOp::DeletePrevious(dev_eui)];
        if self.tx.try_send(Job::Write(op, ack)).is_err() {
            tracing::debug!(%dev_eui, "replaced session removal not queued (store busy)");
        }
    }

    /// Deletes a device's session; resolves once durable.
    pub async fn delete(&self, dev_eui: DevEui) -> Result<(), StoreError> {
        self.submit(|ack| Job::Write(vec![WriteOp::Delete(dev_eui)], ack))
            .await
    }

    /// Resolves once every write queued before it is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.submit(Job::Flush).await
    }
}

fn commit_loop<B: SessionBackend>(
    mut backend: B,
    mut rx: mpsc::Receiver<Job>,
    group: GroupCommit,
    metrics: Metrics,
) {
    let max_batch = group.max_batch;
    let mut ops = Vec::with_capacity(max_batch);
    let mut acks = Vec::with_capacity(max_batch);
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        // Paced: too soon after the previous commit, the rest of the interval gathers more.
        if let Some(due) = last_commit.map(|t| t + group.min_interval) {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(op, ack) => {
                    ops.extend(op);
                    acks.push(ack);
                }
                Job::Flush(ack) => acks.push(ack),
            }
            if ops.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        let result = if ops.is_empty() {
            Ok(())
        } else {
            last_commit = Some(Instant::now());
            backend.commit(&ops).map_err(Arc::new)
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        if !ops.is_empty() {
            metrics.store_commits.with_label_values(&[label]).inc();
            metrics.store_commit_writes.observe(ops.len() as f64);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = ops.len(), "session store commit failed");
        }
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        ops.clear();
    }
}

#[cfg(test)]
mod tests {
    use protocol::ids::DevAddr;
    use protocol::version::MacVersion;

    use super::*;
    use crate::store::embedded::RedbBackend;
    use crate::store::stored::tests::stored;
    use crate::store::stored::StoredNetworkKeys;

    /// Stores sessions `ids` (DevAddr 0x26000000 + id) from one task each, all at once.
    async fn put_concurrently(store: &SessionStore, ids: std::ops::Range<u64>) {
        let puts: Vec<_> = ids
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.put(stored(i, 0x2600_0000 + i as u32)).await })
            })
            .collect();
        for p in puts {
            p.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_within_the_commit_interval_share_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let group = GroupCommit {
            max_batch: 512,
            min_interval: Duration::from_millis(300),
        };
        let backend = RedbBackend::open(dir.path()).unwrap();
        let (store, _, thread) = SessionStore::start_all(backend, group, m.clone()).unwrap();
        let commits = || m.store_commits.with_label_values(&["ok"]).get();
        // After a quiet spell a write commits at once, alone.
        store.put(stored(1, 0x2600_0001)).await.unwrap();
        assert_eq!(commits(), 1);
        // Twenty writes right after it wait out the interval and share one commit.
        put_concurrently(&store, 2..22).await;
        assert_eq!(commits(), 2, "the twenty writes in one commit");
        assert_eq!(m.store_commit_writes.get_sample_sum(), 21.0);
        drop(store);
        thread.join();
        let (_, loaded, _) =
            SessionStore::start(RedbBackend::open(dir.path()).unwrap(), 64, m).unwrap();
        assert_eq!(loaded.len(), 21, "every write durable");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn redb_store_persists_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        {
            let (store, loaded, thread) =
                SessionStore::start(RedbBackend::open(dir.path()).unwrap(), 64, m.clone()).unwrap();
            assert!(loaded.is_empty());
            // Concurrent puts share group commits.
            put_concurrently(&store, 0..50).await;
            let mut replaced = stored(3, 0x2600_0FFF);
            let env = replaced.app_s_key.clone().unwrap();
            replaced.mac_version = Some(MacVersion::V1_1);
            replaced.session_key_id = Some(vec![1, 2, 3]);
            replaced.network_keys = StoredNetworkKeys::V1_1 {
                f_nwk_s_int_key: env.clone(),
                s_nwk_s_int_key: env.clone(),
                nwk_s_enc_key: env,
            };
            store.put(replaced).await.unwrap();
            store.delete(DevEui::new(4)).await.unwrap();
            store.flush().await.unwrap();
            drop(store);
            thread.join();
        }
        let commits = m.store_commits.with_label_values(&["ok"]).get();
        assert!((1..=52).contains(&commits), "{commits} commits");
        let (_store, mut loaded, _t) =
            SessionStore::start(RedbBackend::open(dir.path()).unwrap(), 64, Metrics::new())
                .unwrap();
        loaded.sort_by_key(|s| s.dev_eui);
        assert_eq!(loaded.len(), 49);
        let three = loaded.iter().find(|s| s.dev_eui == DevEui::new(3)).unwrap();
        assert_eq!(three.dev_addr, DevAddr::new(0x2600_0FFF));
        assert!(matches!(three.network_keys, StoredNetworkKeys::V1_1 { .. }));
        assert_eq!(three.mac_version, Some(MacVersion::V1_1));
        assert_eq!(three.session_key_id.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(loaded[0], stored(0, 0x2600_0000));
        assert!(!loaded.iter().any(|s| s.dev_eui == DevEui::new(4)));
    }

    struct Failing;
    impl SessionBackend for Failing {
        fn load_all(&mut self) -> Result<Vec<StoredSession>, StoreError> {
            Ok(Vec::new())
        }
        fn load_previous(&mut self) -> Result<Vec<StoredSession>, StoreError> {
            Ok(Vec::new())
        }
        fn commit(&mut self, _: &[WriteOp]) -> Result<(), StoreError> {
            Err(StoreError::Backend("disk full".into()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commit_failures_reach_every_writer() {
        let m = Metrics::new();
        let (store, _, _t) = SessionStore::start(Failing, 8, m.clone()).unwrap();
        let e = store.put(stored(1, 1)).await.unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(m.store_commits.with_label_values(&["error"]).get(), 1);
    }
}
