//! `healthcheck:`: a service's readiness probe and its timing. Each probe kind is named once, in
//! [`PROBES`], beside the one function that parses it; the allowed keys and the messages that
//! list the kinds are read from that table.

use std::time::Duration;

use super::checker::{join, key, names, one_of, port_number, Checker, Field, Key};
use super::defaults;
use super::yaml::Value;

/// A readiness probe and its timing.
#[derive(Debug, Clone)]
pub struct Healthcheck {
    /// What to check.
    pub probe: ProbeSpec,
    /// Pause between attempts once the first fast polls are over.
    pub interval: Duration,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Failures during this initial period do not count against `retries`.
    pub start_period: Duration,
    /// Failed attempts allowed before the service counts as unhealthy.
    pub retries: u32,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// A TCP connect.
    Tcp {
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
    },
    /// An HTTP GET answered with an accepted status.
    Http {
        /// URL.
        url: String,
        /// Accepted statuses (2xx and 3xx when empty).
        status: Vec<u16>,
    },
    /// A command that must exit 0.
    Exec(Vec<String>),
    /// A real PostgreSQL connection running `SELECT 1`.
    Postgres {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Role.
        user: String,
        /// Password, if any.
        password: Option<String>,
        /// Database.
        database: String,
    },
    /// Redis `PING` answered by `PONG`.
    Redis {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A signed S3 `ListBuckets` with the stack's key.
    S3 {
        /// Endpoint URL, e.g. `http://127.0.0.1:29000`.
        endpoint: String,
        /// Region the server signs with.
        region: String,
        /// Access key id.
        access_key: String,
        /// Secret access key.
        secret_key: String,
    },
    /// The OIDC discovery document answers 200 and names this issuer.
    Oidc {
        /// The issuer URL.
        issuer: String,
    },
}

impl ProbeSpec {
    /// Short name of the probe kind: its key in `healthcheck:` (the table `PROBES` in `spec/health.rs`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tcp { .. } => "tcp",
            Self::Http { .. } => "http",
            Self::Exec(_) => "exec",
            Self::Postgres { .. } => "postgres",
            Self::Redis { .. } => "redis",
            Self::S3 { .. } => "s3",
            Self::Oidc { .. } => "oidc",
        }
    }
}

/// Parses one probe kind's value; `None` when a problem was reported.
type ReadProbe = fn(&mut Checker<'_>, Field<'_>) -> Option<ProbeSpec>;

/// One probe kind: its key in `healthcheck:` (equal to [`ProbeSpec::kind`]) and its parser.
pub(super) struct Probe {
    /// The key, e.g. `tcp`.
    pub kind: &'static str,
    read: ReadProbe,
}

/// Every probe kind, in the order messages list them.
pub(super) const PROBES: &[Probe] = &[
    Probe {
        kind: "tcp",
        read: tcp,
    },
    Probe {
        kind: "http",
        read: http,
    },
    Probe {
        kind: "exec",
        read: |c, at| c.argv(at.node, at.path, at.scope.vars).map(ProbeSpec::Exec),
    },
    Probe {
        kind: "postgres",
        read: postgres,
    },
    Probe {
        kind: "redis",
        read: redis,
    },
    Probe {
        kind: "s3",
        read: s3,
    },
    Probe {
        kind: "oidc",
        read: oidc,
    },
];

/// The timing keys of `healthcheck:`.
const TIMING_KEYS: &[Key<Healthcheck>] = &[
    key("interval", |c, at, hc| {
        hc.interval = c.duration_at(at).unwrap_or(hc.interval)
    }),
    key("timeout", |c, at, hc| {
        hc.timeout = c.duration_at(at).unwrap_or(hc.timeout)
    }),
    key("start_period", |c, Field { node, path, scope }, hc| {
        hc.start_period = c
            .duration(node, path, scope.vars)
            .unwrap_or(hc.start_period)
    }),
    key("retries", |c, at, hc| {
        hc.retries = c.uint_at(at).unwrap_or(hc.retries)
    }),
];

/// Parses `healthcheck:` at `path`: exactly one probe of [`PROBES`] and any timing keys.
pub(super) fn read(c: &mut Checker<'_>, at: Field<'_>) -> Option<Healthcheck> {
    let Field { node, path, scope } = at;
    let kinds: Vec<&str> = PROBES.iter().map(|p| p.kind).collect();
    let mut allowed = kinds.clone();
    allowed.extend(names(TIMING_KEYS));
    let mut hc = Healthcheck {
        // Replaced below by the one probe written; a healthcheck without one is refused.
        probe: ProbeSpec::Exec(Vec::new()),
        interval: defaults::HEALTH_INTERVAL,
        timeout: defaults::HEALTH_TIMEOUT,
        start_period: defaults::HEALTH_START_PERIOD,
        retries: defaults::HEALTH_RETRIES,
    };
    // Counted as written, valid or not: an invalid probe has its own, more precise problem.
    let mut written = 0;
    let mut probe = None;
    for (key, value) in c.map(node, path, &allowed) {
        let kpath = join(path, &key);
        if let Some(kind) = PROBES.iter().find(|p| p.kind == key) {
            written += 1;
            probe = (kind.read)(c, Field::new(value, &kpath, scope));
        } else if let Some(timing) = TIMING_KEYS.iter().find(|k| k.name == key) {
            (timing.read)(c, Field::new(value, &kpath, scope), &mut hc);
        }
    }
    match written {
        1 => {
            hc.probe = probe?;
            Some(hc)
        }
        0 => {
            c.err(
                node.line,
                path,
                format!("names no probe: add one of {}", one_of(&kinds)),
            );
            None
        }
        _ => {
            c.err(
                node.line,
                path,
                format!(
                    "names more than one probe: keep exactly one of {}",
                    one_of(&kinds)
                ),
            );
            None
        }
    }
}

/// The keys a probe kind may have, as read; each kind's table says which it accepts.
#[derive(Default)]
struct Fields {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
    url: Option<String>,
    status: Vec<u16>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    issuer: Option<String>,
}

const HOST: Key<Fields> = key("host", |c, at, f| f.host = c.string_at(at));
const PORT: Key<Fields> = key("port", |c, at, f| f.port = named_port(c, at));
const USER: Key<Fields> = key("user", |c, at, f| f.user = c.string_at(at));
const PASSWORD: Key<Fields> = key("password", |c, at, f| f.password = c.string_at(at));
const DATABASE: Key<Fields> = key("database", |c, at, f| f.database = c.string_at(at));
const URL: Key<Fields> = key("url", |c, at, f| f.url = c.string_at(at));
/// One accepted status or a list of them.
const STATUS: Key<Fields> = key("status", |c, Field { node, path, scope }, f| {
    let items = match &node.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{path}[{i}]")))
            .collect(),
        _ => vec![(node, path.to_string())],
    };
    for (item, ipath) in items {
        if let Some(status) = c.uint(item, &ipath, scope.vars) {
            f.status.push(status as u16);
        }
    }
});
const REGION: Key<Fields> = key("region", |c, at, f| f.region = c.string_at(at));
const ACCESS_KEY: Key<Fields> = key("access_key", |c, at, f| f.access_key = c.string_at(at));
const SECRET_KEY: Key<Fields> = key("secret_key", |c, at, f| f.secret_key = c.string_at(at));
const ISSUER: Key<Fields> = key("issuer", |c, at, f| f.issuer = c.string_at(at));

/// The keys of a probe that only connects: `tcp` and `redis`.
const ENDPOINT_KEYS: &[Key<Fields>] = &[HOST, PORT];
const POSTGRES_KEYS: &[Key<Fields>] = &[HOST, PORT, USER, PASSWORD, DATABASE];
const HTTP_KEYS: &[Key<Fields>] = &[URL, STATUS];
const S3_KEYS: &[Key<Fields>] = &[HOST, PORT, REGION, ACCESS_KEY, SECRET_KEY];
const OIDC_KEYS: &[Key<Fields>] = &[ISSUER];

/// A probe's keys as read, with the address it connects to (`None`: a problem was reported).
fn connect(
    c: &mut Checker<'_>,
    at: Field<'_>,
    keys: &[Key<Fields>],
) -> Option<(Fields, String, u16)> {
    let mut f = Fields::default();
    c.fields(at, keys, &mut f);
    let port = port_or_only(c, at, f.port)?;
    let host = f.host.take().unwrap_or_else(|| defaults::PROBE_HOST.into());
    Some((f, host, port))
}

fn tcp(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProbeSpec> {
    let (_, host, port) = connect(c, at, ENDPOINT_KEYS)?;
    Some(ProbeSpec::Tcp { host, port })
}

fn redis(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProbeSpec> {
    let (_, host, port) = connect(c, at, ENDPOINT_KEYS)?;
    Some(ProbeSpec::Redis { host, port })
}

fn postgres(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProbeSpec> {
    let (f, host, port) = connect(c, at, POSTGRES_KEYS)?;
    let user = f.user.unwrap_or_else(|| defaults::POSTGRES_USER.into());
    Some(ProbeSpec::Postgres {
        // As `psql` does: the database named after the role unless one is given.
        database: f.database.unwrap_or_else(|| user.clone()),
        host,
        port,
        user,
        password: f.password,
    })
}

fn s3(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProbeSpec> {
    let mut f = Fields::default();
    c.fields(at, S3_KEYS, &mut f);
    let (Some(access_key), Some(secret_key)) = (f.access_key, f.secret_key) else {
        let message = format!("needs `{}` and `{}`", ACCESS_KEY.name, SECRET_KEY.name);
        c.err(at.node.line, at.path, message);
        return None;
    };
    let port = port_or_only(c, at, f.port)?;
    let host = f.host.unwrap_or_else(|| defaults::PROBE_HOST.into());
    Some(ProbeSpec::S3 {
        endpoint: format!("http://{host}:{port}"),
        region: f.region.unwrap_or_else(|| defaults::S3_REGION.into()),
        access_key,
        secret_key,
    })
}

fn http(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProbeSpec> {
    let mut f = Fields::default();
    c.fields(at, HTTP_KEYS, &mut f);
    let message = match f.url {
        Some(url) if is_http_url(&url) => {
            let status = f.status;
            return Some(ProbeSpec::Http { url, status });
        }
        Some(url) => format!("`{url}` must start with `http://` or `https://`"),
        None => "is required: the URL to GET, e.g. `http://127.0.0.1:8080/health`".into(),
    };
    c.err(at.node.line, &join(at.path, URL.name), message);
    None
}

fn oidc(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProbeSpec> {
    let mut f = Fields::default();
    c.fields(at, OIDC_KEYS, &mut f);
    match f.issuer {
        Some(issuer) if is_http_url(&issuer) => Some(ProbeSpec::Oidc {
            issuer: issuer.trim_end_matches('/').to_string(),
        }),
        _ => {
            let message = "is required: the issuer URL, e.g. `http://localhost:25556/dex`";
            c.err(at.node.line, &join(at.path, ISSUER.name), message);
            None
        }
    }
}

/// An `http://` or `https://` URL.
pub(super) fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The probe's port, or the service's only port when none is written.
fn port_or_only(c: &mut Checker<'_>, at: Field<'_>, port: Option<u16>) -> Option<u16> {
    let ports = at.scope.ports;
    let only = ports.values().next().copied().filter(|_| ports.len() == 1);
    let port = port.or(only);
    if port.is_none() {
        let names: Vec<&str> = ports.keys().map(String::as_str).collect();
        let message = if names.is_empty() {
            "is required: write a port number (the service has no `ports:` to take it from)".into()
        } else {
            format!(
                "is required: name one of this service's `ports:` ({}) or write a number",
                names.join(", ")
            )
        };
        c.err(at.node.line, &join(at.path, PORT.name), message);
    }
    port
}

/// A port number, or the name of one of the service's `ports:`.
fn named_port(c: &mut Checker<'_>, at: Field<'_>) -> Option<u16> {
    let ports = at.scope.ports;
    let text = c.string(at.node, at.path, at.scope.vars)?;
    let port = ports.get(&text).copied().or_else(|| port_number(&text));
    if port.is_none() {
        let names: Vec<&str> = ports.keys().map(String::as_str).collect();
        let message = if names.is_empty() {
            format!("`{text}` is not a port number (the service has no `ports:` to name)")
        } else {
            format!(
                "`{text}` is neither a port number nor one of this service's `ports:` ({})",
                names.join(", ")
            )
        };
        c.err(at.node.line, at.path, message);
    }
    port
}

#[cfg(test)]
mod tests;
