//! The probe table against [`ProbeSpec`], and each probe kind's own keys.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::spec::checker::Scope;
use crate::spec::interp::Vars;
use crate::spec::{yaml, SpecError};

/// Parses `healthcheck:` from `yaml` for a service whose only port is `http: 8080`; the
/// healthcheck, or the problems' `path: message`.
fn parse(yaml: &str) -> Result<Healthcheck, Vec<String>> {
    let doc = yaml::parse(yaml).expect("test YAML parses");
    let vars = Vars::default();
    let ports = BTreeMap::from([("http".to_string(), 8080)]);
    let scope = Scope {
        vars: &vars,
        root: Path::new("/project"),
        ports: &ports,
    };
    let mut errors: Vec<SpecError> = Vec::new();
    let mut c = Checker::new("services/t.yaml".into(), &mut errors);
    let hc = read(&mut c, Field::new(&doc, "healthcheck", &scope));
    match hc {
        Some(hc) if errors.is_empty() => Ok(hc),
        _ => Err(errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()),
    }
}

/// A valid value for each probe kind.
fn sample(kind: &str) -> &'static str {
    match kind {
        "tcp" | "redis" | "postgres" => "{ port: http }",
        "http" => "{ url: \"http://127.0.0.1:8080/\" }",
        "exec" => "[\"true\"]",
        "s3" => "{ access_key: k, secret_key: s }",
        "oidc" => "{ issuer: \"http://127.0.0.1:8080/dex/\" }",
        other => panic!("no sample for the probe kind `{other}`: add one"),
    }
}

#[test]
fn every_probe_of_the_table_round_trips_through_kind() {
    for probe in PROBES {
        let hc = parse(&format!("{}: {}", probe.kind, sample(probe.kind)))
            .unwrap_or_else(|e| panic!("{}: {e:?}", probe.kind));
        assert_eq!(hc.probe.kind(), probe.kind);
        assert_eq!(hc.interval, defaults::HEALTH_INTERVAL);
        assert_eq!(hc.retries, defaults::HEALTH_RETRIES);
    }
}

#[test]
fn the_messages_list_the_kinds_of_the_table() {
    let none = parse("interval: 1s\n").unwrap_err();
    assert_eq!(
        none,
        ["healthcheck: names no probe: add one of `tcp`, `http`, `exec`, `postgres`, `redis`, `s3` or `oidc`"]
    );
    let two = parse("tcp: {}\nredis: {}\n").unwrap_err();
    assert!(
        two[0].contains("keep exactly one of `tcp`, `http`"),
        "{two:?}"
    );
    let unknown = parse("grpc: {}\n").unwrap_err();
    assert!(
        unknown[0].starts_with("healthcheck.grpc: unknown key `grpc`: expected one of `tcp`,")
            && unknown[0].ends_with("`start_period` or `retries`"),
        "{unknown:?}"
    );
}

#[test]
fn each_probe_kind_reads_only_its_own_keys() {
    let e = parse("tcp: { port: http, user: postgres }\n").unwrap_err();
    assert!(
        e[0].starts_with(
            "healthcheck.tcp.user: unknown key `user`: expected one of `host` or `port`"
        ),
        "{e:?}"
    );
    assert!(parse("redis: { port: http, database: x }\n").is_err());
    assert!(parse("http: { url: \"http://x/\", port: 1 }\n").is_err());
    // tcp and redis take the service's only port and the loopback host.
    let hc = parse("tcp: {}\n").expect("valid");
    assert_eq!(
        hc.probe,
        ProbeSpec::Tcp {
            host: "127.0.0.1".into(),
            port: 8080
        }
    );
}

#[test]
fn postgres_defaults_its_role_and_database_and_s3_its_endpoint() {
    let hc = parse("postgres: { port: 5432, user: app }\n").expect("valid");
    assert_eq!(
        hc.probe,
        ProbeSpec::Postgres {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "app".into(),
            password: None,
            database: "app".into(),
        }
    );
    let hc = parse("postgres: {}\n").expect("valid");
    assert!(
        matches!(&hc.probe, ProbeSpec::Postgres { user, database, .. } if user == "postgres" && database == "postgres")
    );
    let hc = parse("s3: { access_key: k, secret_key: s }\n").expect("valid");
    assert_eq!(
        hc.probe,
        ProbeSpec::S3 {
            endpoint: "http://127.0.0.1:8080".into(),
            region: "us-east-1".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
        }
    );
    let e = parse("s3: { port: http }\n").unwrap_err();
    assert_eq!(e, ["healthcheck.s3: needs `access_key` and `secret_key`"]);
}

#[test]
fn http_statuses_and_timing_keys_are_read() {
    let hc = parse(
        "http: { url: \"https://x/\", status: [200, 204] }\ninterval: 1s\ntimeout: 3s\nstart_period: 5s\nretries: 7\n",
    )
    .expect("valid");
    assert_eq!(
        hc.probe,
        ProbeSpec::Http {
            url: "https://x/".into(),
            status: vec![200, 204]
        }
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.start_period, hc.retries),
        (
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(5),
            7
        )
    );
    let e = parse("http: { url: \"ftp://x\" }\n").unwrap_err();
    assert_eq!(
        e,
        ["healthcheck.http.url: `ftp://x` must start with `http://` or `https://`"]
    );
}
