//! Health probes (tcp, http, exec, postgres, redis), each attempt bounded by its timeout, and
//! [`wait_ready`], which polls fast at first and then at the configured interval.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spec::{Healthcheck, ProbeSpec};
use crate::supervisor::spawn::Spawn;

/// Why one probe attempt failed. The message names the target and includes the cause, as
/// `status` and the unhealthy error show it on one line; the cause is also the error's
/// `source()`, for code that must tell one failure from another.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A TCP connect failed (refused, unreachable): the server does not listen yet.
    #[error("{probe} {host}:{port}: {source}")]
    Connect {
        /// `tcp` or `redis`.
        probe: &'static str,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The attempt did not finish within the probe's timeout.
    #[error("{probe} probe timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        /// The probe kind.
        probe: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// An HTTP request got no answer.
    #[error("GET {url}: {}", error_chain(.source))]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP answer had a status the probe does not accept.
    #[error("GET {url} answered {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// An OIDC discovery document is not JSON.
    #[error("{url} is not JSON: {source}")]
    NotJson {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An OIDC discovery document names another issuer.
    #[error("{url} names issuer {found:?}, expected {expected:?}")]
    Issuer {
        /// The URL.
        url: String,
        /// The issuer it names.
        found: Option<String>,
        /// The issuer the probe expects.
        expected: String,
    },
    /// PostgreSQL refused the connection or the login.
    #[error("postgres {target}: {source}")]
    Postgres {
        /// `host:port/database as user`.
        target: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// PostgreSQL accepted the login but `SELECT 1` failed.
    #[error("postgres SELECT 1: {source}")]
    PostgresQuery {
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// `SELECT 1` returned another value.
    #[error("postgres SELECT 1 returned something else")]
    PostgresAnswer,
    /// A signed `ListBuckets` failed.
    #[error("s3 ListBuckets at {endpoint}: {source}")]
    S3 {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: crate::s3::S3Error,
    },
    /// Redis's `PING` could not be sent or its answer read.
    #[error("redis PING: {source}")]
    RedisIo {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Redis answered `PING` with something other than `PONG`.
    #[error("redis PING answered {reply:?}")]
    RedisReply {
        /// The answer.
        reply: String,
    },
    /// An exec probe's program could not be started.
    #[error("cannot run `{program}`: {source}")]
    ExecSpawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An exec probe's command exited with an error.
    #[error("`{command}` exited with {status}: {output}")]
    ExecExit {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it said (stderr, else stdout), trimmed.
        output: String,
    },
    /// An exec probe's command exited with an error inside the service's box.
    #[error("`{command}` in the box exited with {code}: {output}")]
    BoxExit {
        /// The command line.
        command: String,
        /// Its exit code.
        code: i32,
        /// What it said, trimmed.
        output: String,
    },
    /// An exec probe's command could not run inside the box; the box supervisor says why.
    #[error("`{command}` could not run in the box: {reason}")]
    BoxNotRun {
        /// The command line.
        command: String,
        /// What the box supervisor answered.
        reason: String,
    },
    /// The box supervisor that runs exec probes inside the box cannot be asked.
    #[cfg(feature = "microvm")]
    #[error(transparent)]
    BoxUnreachable(#[from] crate::backend::microvm::boxsup::ExecError),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The prober was built for another kind of probe (a bug).
    #[error("this prober has no {0}")]
    MissingClient(&'static str),
}

/// Why [`wait_ready`] stopped waiting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopReason {
    /// The service exited for good.
    #[error("it exited ({status})")]
    Exited {
        /// How, e.g. `exit 1`.
        status: String,
    },
    /// The time allowed is spent.
    #[error("not healthy within {} (start_period + {retries} retries x {} interval)", humantime::format_duration(*.budget), humantime::format_duration(*.interval))]
    OutOfTime {
        /// `start_period + retries × interval`.
        budget: Duration,
        /// Retries.
        retries: u32,
        /// Interval.
        interval: Duration,
    },
    /// The probe's clients cannot be built.
    #[error("cannot build the probe's client")]
    NoClient,
}

/// Why a service did not become healthy.
#[derive(Debug, thiserror::Error)]
#[error("{reason} after {attempts} probe attempts in {:.1}s; last probe error: {}", .elapsed.as_secs_f64(), last_error_text(.last_error))]
pub struct ProbeFailure {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent.
    pub elapsed: Duration,
    /// The last attempt's error (`None` when no attempt was made).
    #[source]
    pub last_error: Option<ProbeError>,
    /// Why waiting stopped.
    pub reason: StopReason,
}

fn last_error_text(e: &Option<ProbeError>) -> String {
    e.as_ref()
        .map_or_else(|| "no attempt made".into(), ToString::to_string)
}

/// Runs one probe attempt.
pub async fn check(probe: &ProbeSpec, timeout: Duration) -> Result<(), ProbeError> {
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
    pub fn new(probe: &ProbeSpec) -> Result<Prober, ProbeError> {
        let s3 = crate::s3::client_for(probe);
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
    pub async fn check(&self, timeout: Duration) -> Result<(), ProbeError> {
        match tokio::time::timeout(timeout, self.attempt()).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout {
                probe: self.probe.kind(),
                after: timeout,
            }),
        }
    }

    async fn attempt(&self) -> Result<(), ProbeError> {
        let http = &self.http;
        match &self.probe {
            ProbeSpec::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                .await
                .map(|_| ())
                .map_err(|source| ProbeError::Connect {
                    probe: "tcp",
                    host: host.clone(),
                    port: *port,
                    source,
                }),
            ProbeSpec::Http { url, status } => {
                let code = get(http, url).await?.status().as_u16();
                let ok = if status.is_empty() {
                    (200..400).contains(&code)
                } else {
                    status.contains(&code)
                };
                if ok {
                    Ok(())
                } else {
                    Err(ProbeError::HttpStatus {
                        url: url.clone(),
                        status: code,
                    })
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
                    .ok_or(ProbeError::MissingClient("PostgreSQL options"))?;
                let mut conn = sqlx::PgConnection::connect_with(opts)
                    .await
                    .map_err(|source| ProbeError::Postgres {
                        target: format!("{host}:{port}/{database} as {user}"),
                        source,
                    })?;
                let one: (i32,) = sqlx::query_as("SELECT 1")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|source| ProbeError::PostgresQuery { source })?;
                let _ = conn.close().await;
                if one.0 == 1 {
                    Ok(())
                } else {
                    Err(ProbeError::PostgresAnswer)
                }
            }
            ProbeSpec::Oidc { issuer } => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let body = get(http, &url).await?;
                let code = body.status().as_u16();
                if code != 200 {
                    return Err(ProbeError::HttpStatus { url, status: code });
                }
                let bytes = body.bytes().await.map_err(|source| ProbeError::Request {
                    url: url.clone(),
                    source,
                })?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|source| ProbeError::NotJson {
                        url: url.clone(),
                        source,
                    })?;
                match doc.get("issuer").and_then(|i| i.as_str()) {
                    Some(i) if i == issuer => Ok(()),
                    other => Err(ProbeError::Issuer {
                        url,
                        found: other.map(String::from),
                        expected: issuer.clone(),
                    }),
                }
            }
            ProbeSpec::S3 { endpoint, .. } => {
                let client = self
                    .s3
                    .as_ref()
                    .ok_or(ProbeError::MissingClient("S3 client"))?;
                crate::s3::bucket_names(client)
                    .await
                    .map(|_| ())
                    .map_err(|source| ProbeError::S3 {
                        endpoint: endpoint.clone(),
                        source,
                    })
            }
            ProbeSpec::Redis { host, port } => {
                let mut s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| ProbeError::Connect {
                        probe: "redis",
                        host: host.clone(),
                        port: *port,
                        source,
                    })?;
                let io = |source| ProbeError::RedisIo { source };
                s.write_all(b"*1\r\n$4\r\nPING\r\n").await.map_err(io)?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.map_err(io)?;
                let reply = String::from_utf8_lossy(&buf[..n]);
                if reply.starts_with("+PONG") {
                    Ok(())
                } else {
                    Err(ProbeError::RedisReply {
                        reply: reply.trim().to_string(),
                    })
                }
            }
        }
    }
}

/// A GET that fails only when no answer came.
async fn get(http: &reqwest::Client, url: &str) -> Result<reqwest::Response, ProbeError> {
    http.get(url)
        .send()
        .await
        .map_err(|source| ProbeError::Request {
            url: url.to_string(),
            source,
        })
}

fn http_client() -> Result<reqwest::Client, ProbeError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(ProbeError::Client)
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
pub async fn host_exec(argv: &[String]) -> Result<(), ProbeError> {
    let out = Spawn::argv(argv)
        .output()
        .await
        .map_err(|source| ProbeError::ExecSpawn {
            program: argv[0].clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(if out.stderr.is_empty() {
        &out.stdout
    } else {
        &out.stderr
    });
    Err(ProbeError::ExecExit {
        command: argv.join(" "),
        status: out.status,
        output: text.trim().to_string(),
    })
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
    F: FnMut() -> Result<(), StopReason>,
    X: Fn(Vec<String>) -> XF,
    XF: std::future::Future<Output = Result<(), ProbeError>>,
{
    let t0 = Instant::now();
    let budget = hc.start_period + hc.interval * hc.retries;
    let prober = Prober::new(&hc.probe).map_err(|e| ProbeFailure {
        attempts: 0,
        elapsed: Duration::ZERO,
        last_error: Some(e),
        reason: StopReason::NoClient,
    })?;
    let mut attempts = 0u32;
    let mut last_error = None;
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
                .unwrap_or(Err(ProbeError::Timeout {
                    probe: "exec",
                    after: hc.timeout,
                })),
            _ => prober.check(hc.timeout).await,
        };
        match outcome {
            Ok(()) => return Ok(t0.elapsed()),
            Err(e) => last_error = Some(e),
        }
        if t0.elapsed() >= budget {
            return Err(ProbeFailure {
                attempts,
                elapsed: t0.elapsed(),
                last_error,
                reason: StopReason::OutOfTime {
                    budget,
                    retries: hc.retries,
                    interval: hc.interval,
                },
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
