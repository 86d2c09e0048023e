//! The store's roles on Redis: each method is one script (or one read-only command).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;

use super::batch::Shape;
use super::connection::{as_string, ScriptCall};
use super::{as_u64, protocol, RedisStore};
use crate::keys::api_fields;
use crate::{
    Acquire, AcquireReply, AcquireRequest, Api, BlockCause, Cache, ClaimRequest, ExternalToken,
    Health, IdemClaim, Idempotency, Leases, Limiter, NewToken, PreviousClaim, StoreError,
    StoredToken, TokenSource, TokenStore, TokenWrite,
};

#[async_trait]
impl Health for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn set_observer(&self, observer: Arc<dyn crate::StoreObserver>) {
        let _ = self.observer.set(observer);
    }

    async fn now_ms(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = self
            .timed("time", self.conn.cmd(&redis::cmd("TIME")))
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self
            .timed("ping", self.conn.cmd(&redis::cmd("PING")))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(protocol("PING", pong))
        }
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn read_token(&self, appid: &str) -> Result<Option<StoredToken>, StoreError> {
        let h: HashMap<String, String> = self
            .timed(
                "token_read",
                self.conn
                    .cmd(redis::cmd("HGETALL").arg(self.keys.token(appid))),
            )
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| -> Result<u64, StoreError> {
            h.get(f)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| protocol("token hash", f))
        };
        let source = match h.get("source").map(String::as_str) {
            Some("classic") => TokenSource::Classic,
            Some("external") => TokenSource::External,
            _ => TokenSource::Stable,
        };
        // The key expires with the token (PEXPIREAT), so a present key is a live token.
        Ok(Some(StoredToken {
            access_token: h
                .get("access_token")
                .cloned()
                .ok_or_else(|| protocol("token hash", "access_token"))?,
            expires_at_ms: num("expires_at_ms")?,
            fence: num("fence").unwrap_or(0),
            node: h.get("node").cloned().unwrap_or_default(),
            fetched_at_ms: num("fetched_at_ms").unwrap_or(0),
            source,
        }))
    }

    async fn write_token(&self, appid: &str, token: &NewToken) -> Result<TokenWrite, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.token_write, 2);
        inv.key(self.keys.token(appid))
            .key(self.keys.fence(appid))
            .arg(&token.access_token)
            .arg(token.expires_in_ms)
            .arg(token.fence)
            .arg(&token.node)
            .arg(token.source.as_str())
            .arg(token.age_ms);
        let v: Vec<u64> = self.script("token_write", &inv).await?;
        match v.as_slice() {
            [1, expires_at_ms, fetched_at_ms] => Ok(TokenWrite::Written(StoredToken {
                access_token: token.access_token.clone(),
                expires_at_ms: *expires_at_ms,
                fence: token.fence,
                node: token.node.clone(),
                fetched_at_ms: *fetched_at_ms,
                source: token.source,
            })),
            [0, newest] => Ok(TokenWrite::StaleFence {
                stored_fence: *newest,
            }),
            other => Err(protocol("token_write", other)),
        }
    }

    async fn invalidate_token(&self, appid: &str, bad_token: &str) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.token_invalidate, 1);
        inv.key(self.keys.token(appid)).arg(bad_token);
        let n: i64 = self.script("token_invalidate", &inv).await?;
        Ok(n == 1)
    }

    async fn read_external_token(&self, key: &str) -> Result<Option<ExternalToken>, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.external_token_read, 1);
        inv.key(key);
        let v: Vec<Value> = self.script("external_token_read", &inv).await?;
        let kind = v.first().and_then(as_string).unwrap_or_default();
        let token = v.get(1).and_then(as_string).unwrap_or_default();
        let expires = match v.get(2) {
            Some(Value::Int(i)) if *i >= 0 => Some(*i as u64),
            _ => None,
        };
        let read_at_ms = v
            .get(3)
            .and_then(as_u64)
            .ok_or_else(|| protocol("external token", &v))?;
        if kind == "none" || token.is_empty() {
            return Ok(None);
        }
        Ok(Some(ExternalToken {
            access_token: token,
            expires_at_ms: expires,
            read_at_ms,
        }))
    }
}

#[async_trait]
impl Limiter for RedisStore {
    async fn acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireReply, StoreError> {
        use tracing::Instrument;
        let shape = Shape {
            epoch: self.keys.epoch(req.appid),
            blocks: req.blocks.to_vec(),
            quotas: req.quotas.to_vec(),
            windows: req
                .limits
                .iter()
                .map(|l| {
                    let hold = req.loss.hold && l.window_ms <= req.loss.hold_max_window_ms;
                    (l.limit, l.window_ms + req.guard_ms, hold)
                })
                .collect(),
        };
        let keys = req
            .limits
            .iter()
            .map(|l| self.keys.limit_window(req.appid, l))
            .collect();
        // The span covers this send's wait for its batch: the request's trace shows its permit
        // call as it did when every send made its own.
        let answer = self
            .acquire_batched(shape, keys, req.known_seq)
            .instrument(tracing::info_span!("redis_script", script = "acquire"))
            .await?;
        let v = match answer {
            Value::Array(v) => v,
            other => return Err(protocol("acquire", &other)),
        };
        let n = |i: usize| {
            v.get(i)
                .and_then(as_u64)
                .ok_or_else(|| protocol("acquire", &v))
        };
        let state_loss = n(1)? == 1;
        let decision = match n(0)? {
            1 => Acquire::Granted {
                now_ms: n(2)?,
                seq: n(3)?,
            },
            2 => Acquire::Wait {
                wait_ms: n(2)?,
                window: (n(3)? as usize)
                    .checked_sub(1)
                    .filter(|i| *i < req.limits.len())
                    .ok_or_else(|| protocol("acquire", &v))?,
                held: n(4)? == 1,
            },
            3 => {
                let until_ms = n(2)?;
                let index = (n(4)? as usize)
                    .checked_sub(1)
                    .ok_or_else(|| protocol("acquire", &v))?;
                let cause = match n(3)? {
                    1 => BlockCause::Paused {
                        api: *req
                            .blocks
                            .get(index)
                            .ok_or_else(|| protocol("acquire", &v))?,
                        errcode: match v.get(5) {
                            Some(Value::Int(e)) => *e,
                            _ => return Err(protocol("acquire", &v)),
                        },
                    },
                    2 => {
                        let q = req
                            .quotas
                            .get(index)
                            .ok_or_else(|| protocol("acquire", &v))?;
                        BlockCause::Quota {
                            api: q.api,
                            limit: q.limit,
                        }
                    }
                    _ => return Err(protocol("acquire", &v)),
                };
                Acquire::Blocked { until_ms, cause }
            }
            _ => return Err(protocol("acquire", &v)),
        };
        Ok(AcquireReply {
            decision,
            state_loss,
        })
    }

    async fn block(
        &self,
        appid: &str,
        api: Api,
        until_ms: u64,
        errcode: i64,
    ) -> Result<(), StoreError> {
        let f = api_fields(api);
        let mut inv = ScriptCall::new(&self.scripts.block, 1);
        inv.key(self.keys.epoch(appid))
            .arg(f.pause_until)
            .arg(f.pause_errcode)
            .arg(until_ms)
            .arg(errcode);
        let _: i64 = self.script("block", &inv).await?;
        Ok(())
    }
}

#[async_trait]
impl Leases for RedisStore {
    async fn acquire_lease(
        &self,
        appid: &str,
        node: &str,
        ttl_ms: u64,
        known_fence: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.lease_acquire, 2);
        inv.key(self.keys.leader(appid))
            .key(self.keys.fence(appid))
            .arg(node)
            .arg(ttl_ms)
            .arg(known_fence);
        let fence: i64 = self.script("lease_acquire", &inv).await?;
        Ok(u64::try_from(fence).ok())
    }

    async fn renew_lease(&self, appid: &str, node: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.lease_renew, 1);
        inv.key(self.keys.leader(appid)).arg(node).arg(ttl_ms);
        let n: i64 = self.script("lease_renew", &inv).await?;
        Ok(n == 1)
    }

    async fn release_lease(&self, appid: &str, node: &str) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.lease_release, 1);
        inv.key(self.keys.leader(appid)).arg(node);
        let n: i64 = self.script("lease_release", &inv).await?;
        Ok(n == 1)
    }

    async fn lease_holder(&self, appid: &str) -> Result<Option<String>, StoreError> {
        self.timed(
            "lease_holder",
            self.conn
                .cmd(redis::cmd("GET").arg(self.keys.leader(appid))),
        )
        .await
    }
}

#[async_trait]
impl Idempotency for RedisStore {
    async fn claim_idempotency(
        &self,
        appid: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<IdemClaim, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.idem_claim, 1);
        inv.key(self.keys.idempotency(appid, req.key))
            .arg(req.request_id)
            .arg(req.lease_ms)
            .arg(req.ttl_ms)
            .arg(req.api.as_str())
            .arg(req.client_msg_id.unwrap_or(""));
        let v: Vec<Value> = self.script("idem_claim", &inv).await?;
        let s = |i: usize| v.get(i).and_then(as_string).unwrap_or_default();
        let n = |i: usize| v.get(i).and_then(as_u64).unwrap_or(0);
        let non_empty = |x: String| (!x.is_empty()).then_some(x);
        match s(0).as_str() {
            "claimed" => Ok(IdemClaim::Claimed),
            "taken_over" => Ok(IdemClaim::TakenOver {
                previous: PreviousClaim {
                    request_id: s(1),
                    api: Api::parse(&s(4)),
                    client_msg_id: non_empty(s(5)),
                    first_attempt_ms: Some(n(6)).filter(|t| *t > 0),
                    now_ms: n(7),
                },
            }),
            "in_progress" => Ok(IdemClaim::InProgress {
                request_id: s(1),
                lease_left_ms: n(3),
            }),
            "done" => Ok(IdemClaim::Done {
                request_id: s(1),
                result: s(2),
            }),
            _ => Err(protocol("idem_claim", &v)),
        }
    }

    async fn mark_attempt(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
    ) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.idem_attempt, 1);
        inv.key(self.keys.idempotency(appid, key)).arg(request_id);
        let n: i64 = self.script("idem_attempt", &inv).await?;
        Ok(n == 1)
    }

    async fn renew_claim(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.idem_renew, 1);
        inv.key(self.keys.idempotency(appid, key))
            .arg(request_id)
            .arg(lease_ms);
        let n: i64 = self.script("idem_renew", &inv).await?;
        Ok(n == 1)
    }

    async fn complete_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        result: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.idem_complete, 1);
        inv.key(self.keys.idempotency(appid, key))
            .arg(request_id)
            .arg(result)
            .arg(ttl_ms);
        let n: i64 = self.script("idem_complete", &inv).await?;
        Ok(n == 1)
    }

    async fn release_idempotency(
        &self,
        appid: &str,
        key: &str,
        request_id: &str,
        keep_attempt: bool,
    ) -> Result<bool, StoreError> {
        let mut inv = ScriptCall::new(&self.scripts.idem_release, 1);
        inv.key(self.keys.idempotency(appid, key))
            .arg(request_id)
            .arg(u8::from(keep_attempt));
        let n: i64 = self.script("idem_release", &inv).await?;
        Ok(n == 1)
    }
}

#[async_trait]
impl Cache for RedisStore {
    async fn get_cached(&self, appid: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.timed(
            "cache_get",
            self.conn
                .cmd(redis::cmd("GET").arg(self.keys.cache(appid, name))),
        )
        .await
    }

    async fn put_cached(
        &self,
        appid: &str,
        name: &str,
        value: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let _: () = self
            .timed(
                "cache_put",
                self.conn.cmd(
                    redis::cmd("SET")
                        .arg(self.keys.cache(appid, name))
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms),
                ),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl crate::inspect::Inspect for RedisStore {
    async fn inspect_app(
        &self,
        q: &crate::inspect::InspectQuery<'_>,
    ) -> Result<crate::inspect::AppStateRead, StoreError> {
        use crate::inspect::{AppStateRead, BoundedCount, PauseInfo, TokenInfo, WindowUse};
        let app = q.appid;
        let mut inv = ScriptCall::new(&self.scripts.inspect, 4 + q.windows.len());
        inv.key(self.keys.token(app))
            .key(self.keys.leader(app))
            .key(self.keys.fence(app))
            .key(self.keys.epoch(app));
        for (api, _, window_ms) in q.windows {
            inv.key(self.keys.window(app, api.as_str(), *window_ms));
        }
        inv.arg(q.windows.len())
            .arg(q.quotas.len())
            .arg(q.blocks.len())
            .arg(q.scan_limit)
            .arg(self.keys.idempotency_pattern(app))
            .arg(
                q.recipient_window_ms
                    .map(|w| self.keys.recipient_window_pattern(app, w))
                    .unwrap_or_default(),
            );
        for quota in q.quotas {
            let f = api_fields(quota.api);
            inv.arg(f.quota_day).arg(f.quota_used);
        }
        for api in q.blocks {
            let f = api_fields(*api);
            inv.arg(f.pause_until).arg(f.pause_errcode);
        }
        for (_, limit, window_ms) in q.windows {
            inv.arg(*limit).arg((*window_ms + q.guard_ms) * 1000);
        }
        let v: Vec<Value> = self.script("inspect", &inv).await?;
        let bad = || protocol("inspect", v.len());
        let s = |i: usize| v.get(i).and_then(as_string).ok_or_else(bad);
        let n = |i: usize| v.get(i).and_then(as_u64).ok_or_else(bad);
        let int = |i: usize| match v.get(i) {
            Some(Value::Int(x)) => Ok(*x),
            _ => Err(bad()),
        };
        let now_ms = n(0)?;
        // The token is masked here, before anything else sees it.
        let token = match s(1)?.as_str() {
            "" => None,
            t => Some(TokenInfo {
                masked: crate::mask(t),
                expires_at_ms: n(2).unwrap_or(0),
                fence: n(3).unwrap_or(0),
                node: s(4)?,
                fetched_at_ms: n(5).unwrap_or(0),
                source: match s(6)?.as_str() {
                    "classic" => TokenSource::Classic,
                    "external" => TokenSource::External,
                    _ => TokenSource::Stable,
                },
            }),
        };
        let leader = match s(7)?.as_str() {
            "" => None,
            node => Some((node.to_string(), u64::try_from(int(8)?).unwrap_or(0))),
        };
        let fence = n(9).ok();
        let grant_seq = n(10)?;
        let lost_at_ms = Some(n(11)?).filter(|t| *t > 0);
        let mut i = 12;
        let mut windows = Vec::with_capacity(q.windows.len());
        for _ in q.windows {
            windows.push(WindowUse {
                used: n(i)?,
                frees_in_ms: n(i + 1)?,
            });
            i += 2;
        }
        let mut quotas_used = Vec::with_capacity(q.quotas.len());
        for _ in q.quotas {
            quotas_used.push(n(i)?);
            i += 1;
        }
        let mut pauses = Vec::new();
        for api in q.blocks {
            let until_ms = n(i + 1)?;
            if until_ms > 0 {
                pauses.push(PauseInfo {
                    api: *api,
                    errcode: int(i)?,
                    until_ms,
                });
            }
            i += 2;
        }
        let counted = |i: usize| -> Result<BoundedCount, StoreError> {
            Ok(BoundedCount {
                count: n(i)?,
                capped: n(i + 1)? == 1,
            })
        };
        Ok(AppStateRead {
            now_ms,
            token,
            fence,
            leader,
            windows,
            quotas_used,
            pauses,
            idempotency_records: counted(i)?,
            recipients_with_window: counted(i + 2)?,
            grant_seq,
            lost_at_ms,
        })
    }

    async fn lift_pause(&self, appid: &str, api: Api) -> Result<bool, StoreError> {
        let f = api_fields(api);
        let mut inv = ScriptCall::new(&self.scripts.block_lift, 1);
        inv.key(self.keys.epoch(appid))
            .arg(f.pause_until)
            .arg(f.pause_errcode);
        let n: i64 = self.script("block_lift", &inv).await?;
        Ok(n == 1)
    }
}
