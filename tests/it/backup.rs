//! Whole-stack backup and restore on real PostgreSQL, Redis, Garage and the registry: a round
//! trip replaces (never merges) rows, keys and objects; a snapshot with one flipped byte or
//! from a newer format is refused before anything changes; `--dry-run` changes nothing; the
//! backup rehearsal passes; `schema rehearse` never touches the real database.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use crate::data::{kid, sql};
use crate::harness::{block_on, free_port, Project};
use crate::platform::s3;

struct Stack {
    p: Project,
    pg: u16,
    redis: u16,
    dex: u16,
    env: BTreeMap<String, String>,
}

/// PostgreSQL, Redis, Garage, the registry and the OIDC provider on free ports, up, with a table made by `setup`,
/// a Redis key and an object in the `boxlite` bucket.
fn running(name: &str, setup: &str, key: (&str, &str), object: (&str, &'static [u8])) -> Stack {
    let (pg, redis, s3, s3a, s3r, reg, dex) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let p = Project::new(name);
    p.default_service("postgres", 25432, pg)
        .default_service("redis", 26379, redis)
        .default_service_ports("minio", &[(29000, s3), (29001, s3a), (29002, s3r)])
        .default_service("registry", 25000, reg)
        .default_service("dex", 25556, dex);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let env = p.run(&["env", "--json"]).json();
    let env = serde_json::from_value(env).expect("env");
    sql(pg, "boxlite", setup);
    set(redis, key.0, key.1);
    put(&env, object.0, object.1);
    Stack {
        p,
        pg,
        redis,
        dex,
        env,
    }
}

fn put(env: &BTreeMap<String, String>, key: &str, body: &'static [u8]) {
    block_on(async {
        s3(env)
            .put_object()
            .bucket("boxlite")
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(body))
            .send()
            .await
            .expect("put");
    });
}

/// The keys of the `boxlite` bucket with their bodies.
fn objects(env: &BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
    block_on(async {
        let c = s3(env);
        let list = c
            .list_objects_v2()
            .bucket("boxlite")
            .send()
            .await
            .expect("list");
        let mut out = BTreeMap::new();
        for o in list.contents() {
            let key = o.key().unwrap_or_default().to_string();
            let body = c
                .get_object()
                .bucket("boxlite")
                .key(&key)
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec();
            out.insert(key, body);
        }
        out
    })
}

fn redis(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("redis url")
        .get_connection()
        .expect("redis")
}

fn keys(port: u16) -> BTreeMap<String, String> {
    let mut c = redis(port);
    let names: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS");
    names
        .into_iter()
        .map(|k| {
            let v: String = redis::cmd("GET").arg(&k).query(&mut c).expect("GET");
            (k, v)
        })
        .collect()
}

fn set(port: u16, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut redis(port))
        .expect("SET");
}

/// Rows of the test table, in order.
fn rows(pg: u16) -> Vec<String> {
    sql(pg, "boxlite", "SELECT name FROM pets ORDER BY id")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn backup_then_restore_replaces_rows_keys_and_objects_and_refuses_a_damaged_snapshot() {
    let Stack {
        p, pg, redis, env, ..
    } = running(
        "backup",
        "CREATE TABLE pets (id int PRIMARY KEY, name text); INSERT INTO pets VALUES (1, 'ada'), (2, 'bob')",
        ("greeting", "hello"),
        ("a/one.txt", b"one"),
    );
    let (rows0, keys0, objects0) = (rows(pg), keys(redis), objects(&env));
    // A component of the platform, connected to the database: stopped and started again.
    p.service(
        "web",
        &format!(
            "ports: {{ http: {} }}\ndepends_on:\n  postgres: {{ condition: service_healthy }}\nbuild:\n  command: [\"true\"]\n  inputs: [stack.yaml]\nprocess:\n  command: [python3, -m, http.server, \"${{port.http}}\", --bind, 127.0.0.1]\nhealthcheck:\n  http: {{ url: \"http://127.0.0.1:${{port.http}}/\" }}\n  interval: 100ms\n",
            free_port()
        ),
    );
    assert_eq!(p.run(&["up", "web"]).code, 0);
    let web = p.pid("web");

    let r = p.run(&["backup", "--json"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let report = r.json();
    let dir = std::path::PathBuf::from(report["snapshot"].as_str().expect("snapshot path"));
    assert!(
        dir.starts_with(p.dir.join(".stack-backups")),
        "the default destination is beside stack.yaml, outside the state dir: {}",
        dir.display()
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("manifest.json")), 0o600);
    assert_eq!(mode(&dir.join("postgres/boxlite.dump")), 0o600);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["format_version"], 1);
    let services = crate::harness::fields(&manifest, "services", "service");
    assert_eq!(services, ["dex", "minio", "postgres", "redis", "registry"]);
    let name = dir.file_name().expect("name").to_string_lossy().to_string();
    let ls = p.run(&["backup", "ls"]);
    assert!(ls.stdout.contains(&name), "{}", ls.text());

    // Everything changes after the backup: added, altered, removed.
    sql(
        pg,
        "boxlite",
        "INSERT INTO pets VALUES (3, 'cat'); UPDATE pets SET name = 'eve' WHERE id = 1; CREATE TABLE later (x int)",
    );
    set(redis, "greeting", "changed");
    set(redis, "extra", "x");
    put(&env, "a/one.txt", b"overwritten");
    put(&env, "b/two.txt", b"two");
    let changed = (rows(pg), keys(redis), objects(&env));

    // A dry run prints the plan and changes nothing.
    let r = p.run(&["restore", &name, "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("drop and recreate the databases boxlite"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("stop web (those running)"),
        "{}",
        r.stderr
    );
    assert_eq!((rows(pg), keys(redis), objects(&env)), changed);

    // Without a terminal and without --yes: refused with the remedy.
    let r = p.run(&["restore", &name]);
    assert_eq!(r.code, 2, "{}", r.text());
    assert!(r.stderr.contains("without `--yes`"), "{}", r.stderr);

    let r = p.run(&["restore", &name, "--yes"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(rows(pg), rows0, "rows replaced, not merged");
    assert_eq!(
        sql(
            pg,
            "boxlite",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'later'"
        ),
        ["0"]
    );
    assert_eq!(keys(redis), keys0, "keys replaced, not merged");
    assert_eq!(objects(&env), objects0, "objects replaced, not merged");
    let status = p.status();
    assert_ne!(
        p.pid("web"),
        web,
        "the component was stopped and started again"
    );
    for svc in ["postgres", "redis", "minio", "registry", "dex", "web"] {
        assert_eq!(status[svc]["healthy"], true, "{svc} healthy after restore");
    }

    // One flipped byte: refused before anything changes, naming the file.
    set(redis, "after", "restore");
    let dump = dir.join("postgres/boxlite.dump");
    let mut bytes = std::fs::read(&dump).expect("read dump");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&dump, bytes).expect("flip");
    let r = p.run(&["restore", &name, "--yes"]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("postgres/boxlite.dump"), "{}", r.stderr);
    assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
    assert_eq!(keys(redis)["after"], "restore", "nothing was changed");
}

#[test]
fn restore_refuses_a_snapshot_from_a_newer_format() {
    let p = Project::new("newer");
    p.default_service("redis", 26379, free_port());
    let dir = p.dir.join(".stack-backups/20990101T000000Z");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"format_version": 2, "stack": "newer", "created_at": "2099-01-01T00:00:00Z", "services": [], "files": []}"#,
    )
    .expect("write");
    let r = p.run(&["restore", "20990101T000000Z", "--yes"]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("upgrade stack"), "{}", r.stderr);
    assert!(r.stderr.contains("format 2"), "{}", r.stderr);
}

#[test]
fn rehearse_backup_proves_the_round_trip() {
    let Stack {
        p,
        pg,
        redis,
        dex,
        env,
    } = running(
        "rehearse",
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 50) g",
        ("kept", "yes"),
        ("kept.txt", b"kept"),
    );
    let signing_key = kid(dex);
    // It deletes the state dir on the way: nobody to confirm, no `--yes`, nothing done.
    let r = p.run(&["rehearse", "backup"]);
    assert_eq!(r.code, 2, "{}", r.text());
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    let r = p.run(&["rehearse", "backup", "--yes", "--json"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let report = r.json();
    assert_eq!(report["differences"], serde_json::json!([]));
    assert_eq!(
        report["snapshot_kept"], false,
        "a passing rehearsal removes its snapshot"
    );
    let snapshot = report["snapshot"].as_str().expect("snapshot");
    assert!(!std::path::Path::new(snapshot).exists(), "{snapshot}");
    let phases = crate::harness::fields(&report, "phases", "name");
    for phase in ["backup", "reset --nuke", "up", "restore", "compare"] {
        assert!(phases.contains(&phase), "{phase} in {phases:?}");
    }
    // The rehearsal's own rows were there (100) besides ours (50), and are gone again.
    assert!(
        report["counts"]["rows"].as_u64().unwrap_or(0) >= 150,
        "{report}"
    );
    assert_eq!(
        sql(
            pg,
            "boxlite",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'stack_rehearsal'"
        ),
        ["0"]
    );
    assert_eq!(sql(pg, "boxlite", "SELECT count(*) FROM notes"), ["50"]);
    assert_eq!(keys(redis), BTreeMap::from([("kept".into(), "yes".into())]));
    assert_eq!(objects(&env).len(), 1, "only ours is left");
    assert_eq!(
        kid(dex),
        signing_key,
        "the OIDC provider's signing key survives the state dir's deletion"
    );
}

/// The real database's ledger and a checksum of its schema and rows.
fn fingerprint(pg: u16) -> Vec<String> {
    sql(
        pg,
        "boxlite",
        "SELECT string_agg(version::text || name || sha256, ',' ORDER BY version) FROM stack_schema_migrations; \
         SELECT md5(string_agg(table_name || '.' || column_name || ':' || data_type, ',' ORDER BY table_name, column_name)) FROM information_schema.columns WHERE table_schema = 'public'; \
         SELECT count(*) FROM pg_database WHERE datname LIKE '%_rehearse'",
    )
}

#[test]
fn schema_rehearse_applies_pending_migrations_to_a_copy_only() {
    let pg = free_port();
    let p = Project::new("schemarh");
    p.default_service("postgres", 25432, pg).migrations();
    // 0004 and what follows it are held back.
    let held: Vec<(std::path::PathBuf, String)> = ["0004_platform.sql", "0005_backups.sql"]
        .iter()
        .map(|f| {
            let path = p.dir.join("sql/migrations").join(f);
            let sql = std::fs::read_to_string(&path).expect("a migration to hold back");
            std::fs::remove_file(&path).expect("hold it back");
            (path, sql)
        })
        .collect();
    assert_eq!(p.run(&["up"]).code, 0);
    let r = p.run(&["schema", "load"]);
    assert_eq!(r.code, 0, "{}", r.text());

    // Nothing pending: says so.
    let r = p.run(&["schema", "rehearse"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("no pending migration"), "{}", r.text());

    // 0004 and 0005 pending: applied to a copy, with their locks; the real database is
    // untouched.
    for (path, sql) in &held {
        std::fs::write(path, sql).expect("put it back");
    }
    let before = fingerprint(pg);
    let r = p.run(&["schema", "rehearse", "--json"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ledger_verified"], true, "{report}");
    let m = &report["migrations"][0];
    assert_eq!(report["migrations"][1]["name"], "backups", "{report}");
    assert_eq!(m["name"], "platform", "{report}");
    let locks = m["locks"].as_array().expect("locks");
    assert!(
        locks
            .iter()
            .any(|l| l["relation"] == "public.sandboxes" && l["mode"] == "AccessExclusiveLock"),
        "ALTER TABLE sandboxes takes an AccessExclusiveLock: {locks:?}"
    );
    assert_eq!(fingerprint(pg), before, "the real database is untouched");
    let table = p.run(&["schema", "rehearse"]);
    assert!(
        table
            .stdout
            .contains("AccessExclusiveLock on public.sandboxes"),
        "{}",
        table.text()
    );

    // A failing migration: named with its error, exit 1, the copy dropped.
    p.write(
        "sql/migrations/0006_broken.sql",
        "ALTER TABLE runners ADD COLUMN zone text;\nSELECT 1 / 0;\n",
    );
    let r = p.run(&["schema", "rehearse"]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("0006_broken"), "{}", r.stderr);
    assert!(r.stderr.contains("division by zero"), "{}", r.stderr);
    assert_eq!(
        fingerprint(pg),
        before,
        "copy dropped, real database untouched"
    );
}
