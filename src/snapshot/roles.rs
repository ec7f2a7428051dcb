//! Which services hold state, and how each is taken: decided from the stack definition, by the
//! kind of each service's healthcheck (the one table [`ROLES`]). A service with a `postgres`,
//! `redis` or `s3` healthcheck is a server whose data is taken through its own protocol; one
//! with an `oidc` healthcheck (the OIDC provider: signing keys, grants) or an `http` healthcheck
//! on `/v2/` (an OCI registry: blobs, manifests) keeps its state as files in its data dir,
//! copied file by file. Components (`build:`), one-shot tasks and everything else (Caddy) are
//! not backed up: their state is rebuilt from the definition.

use serde::{Deserialize, Serialize};

use crate::spec::{ProbeSpec, ServiceSpec, Stack};

/// How a service's data is taken and restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `pg_dump --format=custom` per database; restore drops, recreates and `pg_restore`s.
    Postgres,
    /// The RDB of a background save; restore puts it in place while stopped.
    Redis,
    /// Every object of every bucket but `backups`; restore empties each bucket and uploads.
    S3,
    /// The data dir, file by file; restore replaces it while the service is stopped.
    Files,
}

impl Role {
    /// How it is taken, in words, for the manifest and the plan.
    pub fn how(self) -> &'static str {
        match self {
            Role::Postgres => "pg_dump --format=custom, one file per database",
            Role::Redis => "its RDB, from a background save (BGSAVE)",
            Role::S3 => "every object of every bucket but `backups`",
            Role::Files => "its data dir, file by file",
        }
    }
}

/// A rule of [`ROLES`]: does this healthcheck make a service stateful, and in which role?
type Detect = fn(&ProbeSpec) -> bool;

/// Healthcheck kind -> role. The first match wins.
pub const ROLES: &[(Role, Detect)] = &[
    (Role::Postgres, |p| matches!(p, ProbeSpec::Postgres { .. })),
    (Role::Redis, |p| matches!(p, ProbeSpec::Redis { .. })),
    (Role::S3, |p| matches!(p, ProbeSpec::S3 { .. })),
    (Role::Files, |p| matches!(p, ProbeSpec::Oidc { .. })),
    (
        Role::Files,
        |p| matches!(p, ProbeSpec::Http { url, .. } if url.trim_end_matches('/').ends_with("/v2")),
    ),
];

/// A stateful service and how it is backed up.
#[derive(Debug, Clone)]
pub struct StatefulService<'a> {
    /// The service.
    pub spec: &'a ServiceSpec,
    /// Its role.
    pub role: Role,
}

/// The stateful services of `stack`, in name order.
pub fn stateful(stack: &Stack) -> Vec<StatefulService<'_>> {
    stack
        .services
        .values()
        .filter(|s| s.build.is_none() && !s.is_task())
        .filter_map(|s| {
            let probe = &s.healthcheck.as_ref()?.probe;
            let role = ROLES.iter().find(|(_, detect)| detect(probe))?.0;
            Some(StatefulService { spec: s, role })
        })
        .collect()
}

/// The services a snapshot leaves out (stateless, components, tasks), for the plan.
pub fn left_out(stack: &Stack) -> Vec<String> {
    let kept: Vec<String> = stateful(stack)
        .iter()
        .map(|s| s.spec.name.clone())
        .collect();
    stack
        .services
        .keys()
        .filter(|n| !kept.contains(n))
        .cloned()
        .collect()
}

/// The bucket a snapshot never takes: it holds the box archives and (with `--to s3://`) the
/// snapshots themselves.
pub const BACKUPS_BUCKET: &str = "backups";
