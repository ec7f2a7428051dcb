//! Health probes (tcp, http, exec, postgres, redis), each attempt bounded by its timeout, and
//! [`wait_ready`], which polls fast at first and then at the configured interval.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spec::{Healthcheck, ProbeSpec};
use crate::supervisor::spawn::Spawn;

/// Why a service did not become healthy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} after {attempts} probe attempts in {:.1}s; last probe error: {last_error}", .elapsed.as_secs_f64())]
pub struct ProbeFailure {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent.
    pub elapsed: Duration,
    /// The last attempt's error.
    pub last_error: String,
    /// Why waiting stopped.
    pub reason: String,
}

/// Runs one probe attempt.
pub async fn check(probe: &ProbeSpec, timeout: Duration) -> Result<(), String> {
    Prober::new(probe)?.check(timeout).await
}

/// One probe with the clients its attempts share. Polls come every 5 ms at first, and
/// building a client (an S3 client sets up TLS and its signing stack) costs more than the
/// refused connect it would make.
pub struct Prober {
    probe: ProbeSpec,
    http: reqwest::Client,
    s3: Option<aws_sdk_s3::Client>,
    /// Resolving these reads the environment, the user database and the socket dirs.
    postgres: Option<sqlx::postgres::PgConnectOptions>,
}

impl Prober {
    /// `probe`, with the clients it needs.
    pub fn new(probe: &ProbeSpec) -> Result<Prober, String> {
        let s3 = match probe {
            ProbeSpec::S3 {
                endpoint,
                region,
                access_key,
                secret_key,
            } => Some(crate::s3::client(endpoint, region, access_key, secret_key)),
            _ => None,
        };
        let postgres = match probe {
            ProbeSpec::Postgres {
                host,
                port,
                user,
                password,
                database,
            } => {
                let opts = sqlx::postgres::PgConnectOptions::new()
                    .host(host)
                    .port(*port)
                    .username(user)
                    .database(database);
                Some(match password {
                    Some(p) => opts.password(p),
                    None => opts,
                })
            }
            _ => None,
        };
        Ok(Prober {
            probe: probe.clone(),
            http: http_client()?,
            s3,
            postgres,
        })
    }

    /// One attempt, bounded by `timeout`.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.attempt()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{} probe timed out after {}",
                self.probe.kind(),
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn attempt(&self) -> Result<(), String> {
        let http = &self.http;
        match &self.probe {
            ProbeSpec::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                .await
                .map(|_| ())
                .map_err(|e| format!("tcp {host}:{port}: {e}")),
            ProbeSpec::Http { url, status } => {
                let resp = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
                let code = resp.status().as_u16();
                let ok = if status.is_empty() {
                    (200..400).contains(&code)
                } else {
                    status.contains(&code)
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!("GET {url} answered {code}"))
                }
            }
            ProbeSpec::Exec(argv) => host_exec(argv).await,
            ProbeSpec::Postgres {
                host,
                port,
                user,
                database,
                ..
            } => {
                let opts = self
                    .postgres
                    .as_ref()
                    .ok_or_else(|| "this prober has no PostgreSQL options".to_string())?;
                let mut conn = sqlx::PgConnection::connect_with(opts)
                    .await
                    .map_err(|e| format!("postgres {host}:{port}/{database} as {user}: {e}"))?;
                let one: (i32,) = sqlx::query_as("SELECT 1")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| format!("postgres SELECT 1: {e}"))?;
                let _ = conn.close().await;
                if one.0 == 1 {
                    Ok(())
                } else {
                    Err("postgres SELECT 1 returned something else".into())
                }
            }
            ProbeSpec::Oidc { issuer } => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let body = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
                let code = body.status().as_u16();
                if code != 200 {
                    return Err(format!("GET {url} answered {code}"));
                }
                let bytes = body.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
                let doc: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{url} is not JSON: {e}"))?;
                match doc.get("issuer").and_then(|i| i.as_str()) {
                    Some(i) if i == issuer => Ok(()),
                    other => Err(format!("{url} names issuer {other:?}, expected {issuer:?}")),
                }
            }
            ProbeSpec::S3 { endpoint, .. } => {
                let client = self
                    .s3
                    .as_ref()
                    .ok_or_else(|| "this prober has no S3 client".to_string())?;
                crate::s3::bucket_names(client)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("s3 ListBuckets at {endpoint}: {e}"))
            }
            ProbeSpec::Redis { host, port } => {
                let mut s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("redis {host}:{port}: {e}"))?;
                s.write_all(b"*1\r\n$4\r\nPING\r\n")
                    .await
                    .map_err(|e| format!("redis PING: {e}"))?;
                let mut buf = [0u8; 64];
                let n = s
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("redis PING: {e}"))?;
                let reply = String::from_utf8_lossy(&buf[..n]);
                if reply.starts_with("+PONG") {
                    Ok(())
                } else {
                    Err(format!("redis PING answered {:?}", reply.trim()))
                }
            }
        }
    }
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How often `wait_ready` asks whether the service still runs: reading its record and its
/// process's start time costs more than a refused connect, and exiting is rare.
const ALIVE_CHECK_EVERY: Duration = Duration::from_millis(25);
/// How long after the start the probe keeps polling at the fast rate.
const FAST_PHASE: Duration = Duration::from_secs(5);
/// Runs an exec probe's command on this host: passes when it exits 0.
pub async fn host_exec(argv: &[String]) -> Result<(), String> {
    let out = Spawn::argv(argv)
        .output()
        .await
        .map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(if out.stderr.is_empty() {
        &out.stdout
    } else {
        &out.stderr
    });
    Err(format!(
        "`{}` exited with {}: {}",
        argv.join(" "),
        out.status,
        text.trim()
    ))
}

/// The fast rate: a refused connect costs microseconds, so being late costs more than polling.
const FAST_DELAY: Duration = Duration::from_millis(5);

/// Polls the probe until it passes. For the first seconds it polls every 5 ms (or `interval`
/// if that is shorter), so a service that is up in 300 ms is seen at 300 ms, not at the next
/// 250 ms tick; then at the configured interval. The time allowed is the same as with plain
/// interval polling: `start_period + retries × interval`. `alive` is asked before the first
/// attempt and every 25 ms after, so a service that exited fails at once instead of after
/// every retry. An `exec` probe's command runs through `exec`, where the service runs (this
/// host, or inside its box).
pub async fn wait_ready<F, X, XF>(
    hc: &Healthcheck,
    mut alive: F,
    exec: X,
) -> Result<Duration, ProbeFailure>
where
    F: FnMut() -> Result<(), String>,
    X: Fn(Vec<String>) -> XF,
    XF: std::future::Future<Output = Result<(), String>>,
{
    let t0 = Instant::now();
    let budget = hc.start_period + hc.interval * hc.retries;
    let prober = Prober::new(&hc.probe).map_err(|e| ProbeFailure {
        attempts: 0,
        elapsed: Duration::ZERO,
        last_error: e,
        reason: "cannot build the probe's client".into(),
    })?;
    let mut attempts = 0u32;
    let mut last_error = String::from("no attempt made");
    let mut next_alive_check = t0;
    loop {
        if Instant::now() >= next_alive_check {
            if let Err(reason) = alive() {
                return Err(ProbeFailure {
                    attempts,
                    elapsed: t0.elapsed(),
                    last_error,
                    reason,
                });
            }
            next_alive_check = Instant::now() + ALIVE_CHECK_EVERY;
        }
        attempts += 1;
        let outcome = match &hc.probe {
            ProbeSpec::Exec(argv) => tokio::time::timeout(hc.timeout, exec(argv.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "exec probe timed out after {}",
                        humantime::format_duration(hc.timeout)
                    ))
                }),
            _ => prober.check(hc.timeout).await,
        };
        match outcome {
            Ok(()) => return Ok(t0.elapsed()),
            Err(e) => last_error = e,
        }
        if t0.elapsed() >= budget {
            return Err(ProbeFailure {
                attempts,
                elapsed: t0.elapsed(),
                last_error,
                reason: format!(
                    "not healthy within {} (start_period + {} retries x {} interval)",
                    humantime::format_duration(budget),
                    hc.retries,
                    humantime::format_duration(hc.interval)
                ),
            });
        }
        let delay = if t0.elapsed() < FAST_PHASE {
            FAST_DELAY.min(hc.interval)
        } else {
            hc.interval
        };
        tokio::time::sleep(delay).await;
    }
}
