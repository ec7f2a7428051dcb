//! Redis, for what expires: runner liveness (`runner:{name}:alive`, set by each heartbeat with
//! the runner TTL) and preview tokens (`preview:{token}`, with the preview TTL, each listed in
//! its sandbox's `sandbox:{id}:previews` set so a migration can point them at the new runner).
//! One multiplexed connection, made again after it breaks (a restarted Redis).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::RedisError;
use tokio::sync::Mutex;

/// A handle on Redis, cheap to clone.
#[derive(Clone)]
pub struct Cache {
    client: redis::Client,
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl Cache {
    /// A cache at `url` (`redis://127.0.0.1:26379/0`); connects on first use.
    pub fn new(url: &str) -> Result<Cache, RedisError> {
        Ok(Cache {
            client: redis::Client::open(url)?,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_multiplexed_async_connection().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut c = self.connection().await?;
        let r = cmd.query_async::<T>(&mut c).await;
        if let Err(e) = &r {
            if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                // The next call connects again.
                *self.conn.lock().await = None;
            }
        }
        r
    }

    /// Sets `key` to `value` for `ttl` (whole seconds, at least one).
    pub async fn set_ex(&self, key: &str, value: &str, ttl: Duration) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("EX").arg(ttl.as_secs().max(1));
        self.query::<()>(&cmd).await
    }

    /// The value of `key`, if it is set and has not expired.
    pub async fn get(&self, key: &str) -> Result<Option<String>, RedisError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// The values of `keys`, in order (`None` where unset or expired).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, RedisError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(redis::cmd("MGET").arg(keys)).await
    }

    /// Adds `member` to the set `key` and makes the set live `ttl` from now.
    pub async fn add_to_set(
        &self,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(key).arg(member).ignore();
        pipe.cmd("EXPIRE")
            .arg(key)
            .arg(ttl.as_secs().max(1))
            .ignore();
        let mut c = self.connection().await?;
        let r = pipe.query_async::<()>(&mut c).await;
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }

    /// The members of the set `key` (none when it does not exist).
    pub async fn members(&self, key: &str) -> Result<Vec<String>, RedisError> {
        self.query(redis::cmd("SMEMBERS").arg(key)).await
    }

    /// Removes `member` from the set `key`.
    pub async fn remove_from_set(&self, key: &str, member: &str) -> Result<(), RedisError> {
        self.query::<()>(redis::cmd("SREM").arg(key).arg(member))
            .await
    }

    /// Sets `key` to `value` if it exists, keeping its time to live; false when it expired.
    pub async fn replace_keep_ttl(&self, key: &str, value: &str) -> Result<bool, RedisError> {
        let r: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("XX")
                    .arg("KEEPTTL"),
            )
            .await?;
        Ok(r.is_some())
    }
}
