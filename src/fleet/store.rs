//! The Redis side of fleet budgets: the two Lua scripts and one connection.
//!
//! Every call has a 50 ms response timeout; a call that fails or times out drops the connection,
//! so a later one starts from a fresh connection rather than from a pipeline in an unknown state.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind};

use crate::metrics::FleetMetrics;

/// Longest wait for any Redis answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(50);
/// Longest wait for a new connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// GCRA "up to N" on Redis's clock. KEYS[1]: the budget's state, the theoretical arrival time
/// (TAT) in µs. ARGV: emission interval in µs (one token), burst in tokens, tokens owed (charged
/// whatever is left), tokens wanted (granted up to what is left), tokens handed back. Returns
/// {granted, µs until one more token would be free}. All arithmetic is in offsets from now, so
/// float precision does not depend on the epoch.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = tonumber(ARGV[1])
local tau = e * tonumber(ARGV[2])
local owed = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local back = tonumber(ARGV[5])
local d = (tonumber(redis.call('GET', KEYS[1])) or now) - now
if d < 0 then d = 0 end
d = math.max(0, d - back * e) + owed * e
local free = math.floor((tau - d) / e + 1e-9)
if free < 0 then free = 0 end
local granted = math.min(want, free)
d = d + granted * e
local retry = 0
if granted < want then retry = math.max(0, math.ceil(d + e - tau)) end
if d > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', now + math.ceil(d)), 'PX', math.ceil(d / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return {granted, retry}
";

/// A guard's heartbeat. KEYS[1]: the fleet's sorted set of guards. ARGV: this guard's id, how
/// long (ms) a heartbeat counts. Returns the guards seen within that time.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

/// One script call for one key.
#[derive(Debug, Clone)]
pub struct LeaseCall {
    pub key: String,
    /// Microseconds per token.
    pub emission_us: f64,
    pub burst: u64,
    pub owed: u64,
    pub want: u64,
    pub back: u64,
}

/// A script call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub tokens: u64,
    pub retry: Duration,
}

/// Why a round trip failed; the label of `fleet_redis_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    Error,
    Timeout,
}

impl CallError {
    pub fn as_str(self) -> &'static str {
        match self {
            CallError::Error => "error",
            CallError::Timeout => "timeout",
        }
    }
}

/// The connection to the fleet's Redis, when there is one.
pub struct Store {
    client: Client,
    conn: Option<MultiplexedConnection>,
    lease: Script,
    heartbeat: Script,
}

impl Store {
    /// Checks the URL (`redis://[:password@]host:port[/db]`); connects later.
    pub fn new(url: &str) -> Result<Store, RedisError> {
        Ok(Store {
            client: Client::open(url)?,
            conn: None,
            lease: Script::new(LEASE),
            heartbeat: Script::new(HEARTBEAT),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Opens a connection and loads both scripts.
    pub async fn connect(&mut self) -> Result<(), CallError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg);
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(classify(&e)),
            Err(_) => return Err(CallError::Timeout),
        };
        self.load_scripts(&mut conn).await?;
        self.conn = Some(conn);
        Ok(())
    }

    async fn load_scripts(&self, conn: &mut MultiplexedConnection) -> Result<(), CallError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(LEASE);
        pipe.cmd("SCRIPT").arg("LOAD").arg(HEARTBEAT);
        let load = pipe.query_async::<(String, String)>(conn);
        match tokio::time::timeout(RESPONSE_TIMEOUT, load).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Sends this guard's heartbeat; returns the live guards.
    pub async fn heartbeat(
        &mut self,
        set: &str,
        guard: &str,
        ttl: Duration,
        m: &FleetMetrics,
    ) -> Result<u32, CallError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.heartbeat.get_hash())
            .arg(1)
            .arg(set)
            .arg(guard)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let live: (u32,) = self.round_trip(&pipe, 1, m).await?;
        Ok(live.0)
    }

    /// Runs one lease script per call, in one round trip.
    pub async fn lease(
        &mut self,
        calls: &[LeaseCall],
        m: &FleetMetrics,
    ) -> Result<Vec<Granted>, CallError> {
        let mut pipe = redis::pipe();
        for c in calls {
            pipe.cmd("EVALSHA")
                .arg(self.lease.get_hash())
                .arg(1)
                .arg(&c.key)
                .arg(c.emission_us)
                .arg(c.burst)
                .arg(c.owed)
                .arg(c.want)
                .arg(c.back);
        }
        let answers: Vec<(u64, u64)> = self.round_trip(&pipe, calls.len(), m).await?;
        Ok(answers
            .into_iter()
            .map(|(tokens, retry_us)| Granted {
                tokens,
                retry: Duration::from_micros(retry_us),
            })
            .collect())
    }

    /// One pipelined round trip of `calls` script calls, counted and timed. A Redis that lost
    /// its scripts (restarted empty) answers NOSCRIPT: the scripts are loaded again and the
    /// pipeline sent once more. Any failure drops the connection.
    async fn round_trip<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
        calls: usize,
        m: &FleetMetrics,
    ) -> Result<T, CallError> {
        let count = |result: &str| {
            m.redis_calls
                .with_label_values(&[result])
                .inc_by(calls as u64);
        };
        let Some(mut conn) = self.conn.take() else {
            return Err(CallError::Error);
        };
        let mut reloaded = false;
        loop {
            let started = Instant::now();
            let query = pipe.query_async::<T>(&mut conn);
            let answer = tokio::time::timeout(RESPONSE_TIMEOUT, query).await;
            m.redis_duration.observe(started.elapsed().as_secs_f64());
            let err = match answer {
                Ok(Ok(v)) => {
                    count("ok");
                    self.conn = Some(conn);
                    return Ok(v);
                }
                Ok(Err(e))
                    if !reloaded && e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
                {
                    count("noscript");
                    reloaded = true;
                    match self.load_scripts(&mut conn).await {
                        Ok(()) => continue,
                        Err(e) => e,
                    }
                }
                Ok(Err(e)) => classify(&e),
                Err(_) => CallError::Timeout,
            };
            count(err.as_str());
            return Err(err);
        }
    }
}

fn classify(e: &RedisError) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else {
        CallError::Error
    }
}
