//! Acquires joined into one `acquire.lua` call.
//!
//! Every send asks Redis for its permits; on one Redis thread shared by the whole cluster, a
//! call's fixed cost (reading and parsing the command, starting the script, `TIME`, reading and
//! writing the app's epoch hash) outweighs the work of the permits themselves. So the acquires
//! a runtime makes in one scheduler pass (on an actix worker: the requests it read from its
//! sockets in one go) are decided by one script call per app and shape: the first one schedules
//! a flush task, the others join its batch, and the flush runs once the pass is over, so no
//! acquire waits for a timer or for more company. The script decides the sends one after the
//! other, in the order they joined, exactly as separate calls would have.
//!
//! A batch holds sends of one app with the same pauses, quotas and window shapes (those of one
//! API under one configuration): only their window keys differ. Other sends go in other calls
//! of the same flush, pipelined on the same connection.
//!
//! If this process dies: a batch is one script, atomic in Redis; it ran for all its sends or for
//! none. A send whose caller went away after joining (cancelled, timed out) is still decided
//! with its batch, and a permit it is granted goes unused: like a permit granted just before
//! its send was cancelled, it can only make the cluster send less than its limits, never more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::Value;
use tokio::sync::oneshot;

use super::connection::{RedisConn, ScriptCall};
use super::{observed, protocol, RedisStore, Scripts};
use crate::keys::api_fields;
use crate::{Api, DailyQuota, StoreError, StoreObserver};

/// At most this many sends in one script call; more pending ones go in further calls.
pub(crate) const MAX_BATCH: usize = 64;

/// What the sends of one batch share: everything `acquire.lua` takes but the window keys and
/// the known sequence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub epoch: String,
    pub blocks: Vec<Api>,
    pub quotas: Vec<DailyQuota>,
    /// Per window: the limit, its span (window + guard, ms) and whether a state loss holds it.
    pub windows: Vec<(u64, u64, bool)>,
}

/// One send waiting for its answer.
struct Member {
    shape: Shape,
    keys: Vec<String>,
    known_seq: u64,
    answer: oneshot::Sender<Result<Value, StoreError>>,
}

/// The pending batches, per tokio runtime (each runtime's flush uses its own connection; see
/// `connection::Slot`). An entry lives from the first join to its flush, one scheduler pass.
#[derive(Default)]
pub(crate) struct Batcher {
    pending: Mutex<HashMap<tokio::runtime::Id, Vec<Member>>>,
}

/// What a flush needs of the store, owned: it runs as a task of its own.
struct Flusher {
    conn: Arc<RedisConn>,
    scripts: Arc<Scripts>,
    batcher: Arc<Batcher>,
    observer: Option<Arc<dyn StoreObserver>>,
}

impl RedisStore {
    /// Joins this runtime's pending batch (scheduling its flush when it is the first) and
    /// waits for this send's answer: one element of `acquire.lua`'s answer array.
    pub(super) async fn acquire_batched(
        &self,
        shape: Shape,
        keys: Vec<String>,
        known_seq: u64,
    ) -> Result<Value, StoreError> {
        let (answer, rx) = oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let first = {
            let mut pending = self
                .batcher
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let batch = pending.entry(runtime.id()).or_default();
            batch.push(Member {
                shape,
                keys,
                known_seq,
                answer,
            });
            batch.len() == 1
        };
        if first {
            let flusher = Flusher {
                conn: self.conn.clone(),
                scripts: self.scripts.clone(),
                batcher: self.batcher.clone(),
                observer: self.observer.get().cloned(),
            };
            runtime.spawn(flusher.flush(runtime.id()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the permit batch was dropped before it ran (runtime shutting down)".into(),
            ))
        })
    }
}

impl Flusher {
    /// Runs the runtime's pending sends: one script call per shape and up to [`MAX_BATCH`]
    /// sends, all of them at once on the connection.
    async fn flush(self, runtime: tokio::runtime::Id) {
        let members = {
            let mut pending = self
                .batcher
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pending.remove(&runtime).unwrap_or_default()
        };
        let mut groups: Vec<Vec<Member>> = Vec::new();
        for m in members {
            match groups
                .iter_mut()
                .find(|g| g.len() < MAX_BATCH && g[0].shape == m.shape)
            {
                Some(g) => g.push(m),
                None => groups.push(vec![m]),
            }
        }
        futures_util::future::join_all(groups.into_iter().map(|g| self.run(g))).await;
    }

    async fn run(&self, members: Vec<Member>) {
        let shape = &members[0].shape;
        let nl = shape.windows.len();
        let mut call = ScriptCall::new(&self.scripts.acquire, 1 + nl * members.len());
        call.key(&shape.epoch);
        for m in &members {
            for k in &m.keys {
                call.key(k);
            }
        }
        let known_seq = members.iter().map(|m| m.known_seq).max().unwrap_or(0);
        call.arg(known_seq)
            .arg(members.len())
            .arg(shape.blocks.len())
            .arg(shape.quotas.len())
            .arg(nl);
        for api in &shape.blocks {
            let f = api_fields(*api);
            call.arg(f.pause_until).arg(f.pause_errcode);
        }
        for q in &shape.quotas {
            let f = api_fields(q.api);
            call.arg(f.quota_day).arg(f.quota_used);
        }
        for q in &shape.quotas {
            call.arg(q.limit);
        }
        for &(limit, span_ms, hold) in &shape.windows {
            call.arg(limit)
                .arg(span_ms * 1000)
                .arg(span_ms + 1000)
                .arg(u8::from(hold));
        }
        let r = observed(
            self.observer.as_ref(),
            "acquire",
            self.conn.run_untraced::<Vec<Value>>(&call),
        )
        .await
        .and_then(|answers| match answers.len() == members.len() {
            true => Ok(answers),
            false => Err(protocol("acquire (one answer per send)", &answers)),
        });
        match r {
            Ok(answers) => {
                for (m, a) in members.into_iter().zip(answers) {
                    let _ = m.answer.send(Ok(a));
                }
            }
            Err(e) => {
                for m in members {
                    let _ = m.answer.send(Err(e.clone()));
                }
            }
        }
    }
}
