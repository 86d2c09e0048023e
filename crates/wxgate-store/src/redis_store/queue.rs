//! Queued delivery on Redis Streams: scripts for the atomic steps (enqueue, finish, touch,
//! redrive), plain commands for the reads. Blocking reads run on a connection of the app's own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

use super::connection::{as_string, RedisConn, ScriptCall};
use super::{as_u64, protocol, RedisStore};
use crate::{
    DeadLetter, EnqueueRequest, Enqueued, Finish, Queue, QueueEntry, QueueStats, QueuedMessage,
    StoreError,
};

/// The consumer group every node reads through.
pub const GROUP: &str = "wxgate";

fn items(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a.iter().collect()),
        Value::Map(m) => Some(m.iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

/// `[[entry_id, [field, value, ...]], ...]` → entries; an entry without an `id` field (deleted
/// data) is skipped.
fn entries(v: &Value) -> Vec<QueueEntry> {
    let mut out = Vec::new();
    for e in items(v).unwrap_or_default() {
        let Some(parts) = items(e) else { continue };
        let (Some(entry), Some(fields)) = (parts.first().and_then(|v| as_string(v)), parts.get(1))
        else {
            continue;
        };
        let fields = items(fields).unwrap_or_default();
        let id = fields
            .chunks(2)
            .find(|kv| kv.first().and_then(|k| as_string(k)).as_deref() == Some("id"))
            .and_then(|kv| kv.get(1).and_then(|v| as_string(v)));
        if let Some(id) = id {
            out.push(QueueEntry { entry, id });
        }
    }
    out
}

impl RedisStore {
    /// The app's own connection for blocking reads: its command timeout covers the block.
    fn reader(&self, appid: &str, block_ms: u64) -> Arc<RedisConn> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers
            .entry(appid.to_string())
            .or_insert_with(|| {
                let mut cfg = self.cfg.clone();
                cfg.command_timeout += Duration::from_millis(block_ms);
                Arc::new(RedisConn::new(cfg))
            })
            .clone()
    }
}

#[async_trait]
impl Queue for RedisStore {
    async fn enqueue(&self, appid: &str, req: &EnqueueRequest<'_>) -> Result<Enqueued, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.q_enqueue, 3);
        let idem = match req.idempotency {
            Some((caller, key)) => self.keys.queue_idempotency(appid, caller, key),
            None => self.keys.queue_idempotency(appid, "-", req.id),
        };
        inv.key(self.keys.queue(appid))
            .key(self.keys.queue_message(appid, req.id))
            .key(idem)
            .arg(req.id)
            .arg(req.payload)
            .arg(req.max_backlog)
            .arg(req.ttl_ms)
            .arg(if req.idempotency.is_some() { "1" } else { "0" });
        let v: Vec<Value> = self.script("q_enqueue", &inv).await?;
        match v.first().and_then(as_u64) {
            Some(1) => Ok(Enqueued::Existing {
                id: v
                    .get(1)
                    .and_then(as_string)
                    .ok_or_else(|| protocol("q_enqueue", &v))?,
            }),
            Some(2) => Ok(Enqueued::Accepted {
                id: req.id.to_string(),
            }),
            Some(0) => Ok(Enqueued::Full {
                depth: v.get(1).and_then(as_u64).unwrap_or(0),
                oldest_age_ms: v.get(2).and_then(as_u64).unwrap_or(0),
            }),
            _ => Err(protocol("q_enqueue", &v)),
        }
    }

    async fn ensure_group(&self, appid: &str) -> Result<(), StoreError> {
        // BUSYGROUP: the group exists already.
        let _: Option<Value> = self
            .conn
            .cmd_unless(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys.queue(appid))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
                "BUSYGROUP",
            )
            .await?;
        Ok(())
    }

    async fn read(
        &self,
        appid: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let conn = self.reader(appid, block_ms);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.keys.queue(appid))
            .arg(">");
        let v: Value = match conn.cmd_unless(&cmd, "NOGROUP").await? {
            Some(v) => v,
            None => {
                // The stream or its group is gone (a flush, a restart without persistence).
                self.ensure_group(appid).await?;
                conn.cmd(&cmd).await?
            }
        };
        // [[stream, [entries]]] (RESP2) or {stream: [entries]} (RESP3); nil on timeout.
        let Some(streams) = items(&v) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for s in streams {
            if let Some(pair) = items(s) {
                if let Some(list) = pair.get(1) {
                    out.extend(entries(list));
                }
            } else {
                // RESP3 map flattened: key, value alternate.
                out.extend(entries(s));
            }
        }
        Ok(out)
    }

    async fn claim_idle(
        &self,
        appid: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let r: Option<Value> = self
            .conn
            .cmd_unless(
                redis::cmd("XAUTOCLAIM")
                    .arg(self.keys.queue(appid))
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(min_idle_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count.max(1)),
                "NOGROUP",
            )
            .await?;
        let Some(v) = r else {
            self.ensure_group(appid).await?;
            return Ok(Vec::new());
        };
        let parts = items(&v).ok_or_else(|| protocol("XAUTOCLAIM", &v))?;
        Ok(parts.get(1).map(|l| entries(l)).unwrap_or_default())
    }

    async fn touch(&self, appid: &str, consumer: &str, entry: &str) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.q_touch, 1);
        inv.key(self.keys.queue(appid))
            .arg(GROUP)
            .arg(entry)
            .arg(consumer);
        let n: i64 = self.script("q_touch", &inv).await?;
        Ok(n == 1)
    }

    async fn message(&self, appid: &str, id: &str) -> Result<Option<QueuedMessage>, StoreError> {
        let h: HashMap<String, String> = self
            .conn
            .cmd(redis::cmd("HGETALL").arg(self.keys.queue_message(appid, id)))
            .await?;
        if h.is_empty() || !h.contains_key("state") {
            return Ok(None);
        }
        let num = |f: &str| h.get(f).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(QueuedMessage {
            state: h.get("state").cloned().unwrap_or_default(),
            payload: h.get("payload").cloned().unwrap_or_default(),
            attempts: num("attempts").unwrap_or(0) as u32,
            gen: num("gen").unwrap_or(0) as u32,
            msgid: h.get("msgid").cloned(),
            error: h.get("error").cloned(),
            created_ms: num("created_ms").unwrap_or(0),
            updated_ms: num("updated_ms").unwrap_or(0),
            finished_ms: num("finished_ms"),
        }))
    }

    async fn update(
        &self,
        appid: &str,
        id: &str,
        fields: &[(&str, String)],
    ) -> Result<(), StoreError> {
        if fields.is_empty() {
            return Ok(());
        }
        let mut inv = ScriptCall::new(&self.scripts.q_update, 1);
        inv.key(self.keys.queue_message(appid, id));
        for (k, v) in fields {
            inv.arg(*k).arg(v.as_str());
        }
        let _: i64 = self.script("q_update", &inv).await?;
        Ok(())
    }

    async fn finish(&self, appid: &str, f: &Finish<'_>) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.q_finish, 3);
        inv.key(self.keys.queue(appid))
            .key(self.keys.queue_message(appid, f.id))
            .key(self.keys.dead_letters(appid))
            .arg(GROUP)
            .arg(f.entry)
            .arg(f.state)
            .arg(f.msgid.unwrap_or(""))
            .arg(f.error.unwrap_or(""))
            .arg(if f.dead_letter { "1" } else { "0" })
            .arg(f.ttl_ms)
            .arg(f.id)
            .arg(f.node)
            .arg(f.attempts.map(|a| a.to_string()).unwrap_or_default());
        let n: i64 = self.script("q_finish", &inv).await?;
        Ok(n == 1)
    }

    async fn stats(&self, appid: &str) -> Result<QueueStats, StoreError> {
        let q = self.keys.queue(appid);
        let depth: u64 = self.conn.cmd(redis::cmd("XLEN").arg(&q)).await?;
        let dead_letters: u64 = self
            .conn
            .cmd(redis::cmd("XLEN").arg(self.keys.dead_letters(appid)))
            .await?;
        let pending = self
            .conn
            .cmd_unless::<Value>(redis::cmd("XPENDING").arg(&q).arg(GROUP), "NOGROUP")
            .await?
            .and_then(|v| items(&v).and_then(|p| p.first().and_then(|c| as_u64(c))))
            .unwrap_or(0);
        let first: Value = self
            .conn
            .cmd(
                redis::cmd("XRANGE")
                    .arg(&q)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        let oldest_ms = entries(&first).first().and_then(|e| {
            e.entry
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<u64>().ok())
        });
        let oldest_age_ms = match oldest_ms {
            Some(ms) => {
                let now = crate::Health::now_ms(self).await?;
                Some(now.saturating_sub(ms))
            }
            None => None,
        };
        Ok(QueueStats {
            depth,
            pending,
            oldest_age_ms,
            dead_letters,
        })
    }

    async fn dead_letters(&self, appid: &str, count: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let v: Value = self
            .conn
            .cmd(
                redis::cmd("XRANGE")
                    .arg(self.keys.dead_letters(appid))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count.max(1)),
            )
            .await?;
        Ok(entries(&v)
            .into_iter()
            .map(|e| DeadLetter {
                entry: e.entry,
                id: e.id,
            })
            .collect())
    }

    async fn redrive(
        &self,
        appid: &str,
        letter: &DeadLetter,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.q_redrive, 3);
        inv.key(self.keys.dead_letters(appid))
            .key(self.keys.queue(appid))
            .key(self.keys.queue_message(appid, &letter.id))
            .arg(&letter.entry)
            .arg(&letter.id)
            .arg(ttl_ms);
        let n: i64 = self.script("q_redrive", &inv).await?;
        Ok(n == 1)
    }
}
