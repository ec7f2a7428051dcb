//! The data lifecycle on real PostgreSQL (and Garage for the buckets): schema ledger, refusals
//! with exit 3, idempotent seed, the three reset tiers and rebuild-box.

use sqlx::{Connection, Row};

use crate::harness::{block_on, free_port, Project};

struct Data {
    p: Project,
    pg: u16,
    dex: u16,
}

fn project() -> Data {
    let (pg, s3, s3a, s3r, dex) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let p = Project::new("data");
    p.default_service("postgres", 25432, pg)
        .default_service_ports("minio", &[(29000, s3), (29001, s3a), (29002, s3r)])
        .default_service("dex", 25556, dex)
        .default_service_ports("schema", &[])
        .default_service_ports("seed", &[]);
    p.migrations();
    Data { p, pg, dex }
}

pub(crate) fn sql(port: u16, db: &str, query: &str) -> Vec<String> {
    block_on(async {
        let mut c = sqlx::PgConnection::connect(&format!(
            "postgres://boxlite:boxlite@127.0.0.1:{port}/{db}"
        ))
        .await
        .expect("connect");
        let mut out = Vec::new();
        for q in query.split(';').filter(|q| !q.trim().is_empty()) {
            for row in sqlx::query(q)
                .fetch_all(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{q}: {e}"))
            {
                if row.len() > 0 {
                    let v: Option<String> = row
                        .try_get::<String, _>(0)
                        .ok()
                        .or_else(|| row.try_get::<i64, _>(0).ok().map(|n| n.to_string()));
                    out.push(v.unwrap_or_default());
                }
            }
        }
        out
    })
}

fn counts(port: u16) -> Vec<String> {
    sql(
        port,
        "boxlite",
        "SELECT count(*) FROM users; SELECT count(*) FROM organizations; SELECT count(*) FROM organization_users; SELECT count(*) FROM regions; SELECT count(*) FROM api_keys",
    )
}

#[test]
fn schema_loads_once_and_refuses_foreign_objects_edited_migrations_and_bad_urls() {
    let Data { p, pg, .. } = project();
    assert_eq!(p.run(&["up", "postgres"]).code, 0);
    let r = p.run(&["schema", "load"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains(
            "applied 0001_identity, 0002_compute, 0003_audit, 0004_platform, 0005_backups"
        ),
        "{}",
        r.stderr
    );
    let r = p.run(&["schema", "load"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("up to date (5 migrations applied)"),
        "the second load is a no-op: {}",
        r.stderr
    );
    let st = p.run(&["schema", "status", "--json"]).json();
    assert_eq!(st["applied"].as_array().map(Vec::len), Some(5));
    assert_eq!(st["pending"].as_array().map(Vec::len), Some(0));

    // An applied migration edited afterwards: refused, naming the file and the remedy.
    let file = p.dir.join("sql/migrations/0002_compute.sql");
    let original = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, format!("{original}\n-- an innocent-looking edit\n")).expect("edit");
    let r = p.run(&["schema", "load"]);
    assert_eq!(r.code, 3, "{}", r.text());
    assert!(
        r.stderr
            .contains("0002_compute.sql was edited after it was applied"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("stack reset --hard"), "{}", r.stderr);
    std::fs::write(&file, original).expect("restore");

    // A table of the schema created by hand in an empty database: refused, naming it.
    sql(pg, "boxlite", "CREATE DATABASE handmade");
    sql(pg, "handmade", "CREATE TABLE regions (id text PRIMARY KEY)");
    let url = format!("postgresql://boxlite:boxlite@127.0.0.1:{pg}/handmade");
    let r = p.run(&["schema", "load", "--database-url", &url]);
    assert_eq!(r.code, 3, "{}", r.text());
    assert!(
        r.stderr.contains("table `regions` already exists"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("0002_compute"), "{}", r.stderr);
    assert_eq!(
        sql(
            pg,
            "handmade",
            "SELECT count(*)::bigint FROM pg_tables WHERE schemaname = 'public'"
        ),
        vec!["1"],
        "nothing was applied"
    );

    // PostgreSQL unreachable: exit 1 naming the URL tried, password hidden.
    let dead = format!(
        "postgresql://boxlite:secret@127.0.0.1:{}/boxlite",
        free_port()
    );
    let r = p.run(&["schema", "load", "--database-url", &dead]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(
        r.stderr.contains("postgresql://boxlite:***@127.0.0.1:") && !r.stderr.contains("secret"),
        "{}",
        r.stderr
    );
}

#[test]
fn up_loads_and_seeds_seed_is_idempotent_and_resets_keep_what_they_promise() {
    let Data { p, pg, .. } = project();
    let r = p.run(&["up", "seed"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let plan = p.run(&["plan", "--json", "seed"]).json();
    assert_eq!(
        plan["waves"],
        serde_json::json!([["minio", "postgres"], ["schema"], ["seed"]])
    );
    let seeded = counts(pg);
    assert_eq!(
        seeded,
        vec!["3", "3", "3", "1", "1"],
        "users, orgs, memberships, regions, api keys"
    );
    let r = p.run(&["seed"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stderr.contains("nothing to add"), "{}", r.stderr);
    assert_eq!(counts(pg), seeded, "a second seed changes nothing");
    // The admin key is in the state dir (0600) and only its hash is in the database.
    let env = p.run(&["env", "--json"]).json();
    let key = env["ADMIN_API_KEY"]
        .as_str()
        .expect("ADMIN_API_KEY")
        .to_string();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    assert_eq!(
        sql(pg, "boxlite", "SELECT key_hash FROM api_keys"),
        vec![hash]
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p.state_dir().join("secrets/admin-api-key"))
            .expect("secret")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A missing row is added back.
    sql(
        pg,
        "boxlite",
        "DELETE FROM regions WHERE id = 'us' AND NOT EXISTS (SELECT 1 FROM runners)",
    );
    assert_eq!(p.run(&["seed"]).code, 0);
    assert_eq!(counts(pg), seeded);

    let add_sandbox = "INSERT INTO sandboxes (organization_id, region_id, name) SELECT id, 'us', 'sb' FROM organizations WHERE created_by = 'boxlite-admin'";
    sql(pg, "boxlite", add_sandbox);
    // Without a terminal, --yes is required; --dry-run changes nothing.
    let r = p.run(&["reset", "--soft"]);
    assert_eq!(r.code, 2, "{}", r.text());
    assert!(
        r.stderr.contains("truncate sandboxes") && r.stderr.contains("--yes"),
        "the plan comes first: {}",
        r.stderr
    );
    assert_eq!(p.run(&["reset", "--soft", "--dry-run"]).code, 0);
    assert_eq!(
        sql(pg, "boxlite", "SELECT count(*) FROM sandboxes"),
        vec!["1"]
    );
    let r = p.run(&["reset", "--soft", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(
        sql(pg, "boxlite", "SELECT count(*) FROM sandboxes"),
        vec!["0"]
    );
    assert_eq!(
        counts(pg),
        seeded,
        "soft keeps users, organizations, regions, keys"
    );

    // Hard: a table of ours and a sandbox vanish, the schema is reloaded and re-seeded, buckets emptied.
    sql(pg, "boxlite", add_sandbox);
    sql(pg, "boxlite", "CREATE TABLE scratch (x int)");
    let env: std::collections::BTreeMap<String, String> = serde_json::from_value(env).expect("env");
    let s3 = stack::s3::client(
        &env["S3_ENDPOINT"],
        "us-east-1",
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
    );
    block_on(async {
        s3.put_object()
            .bucket("boxlite")
            .key("old.txt")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .send()
            .await
            .expect("put");
    });
    let r = p.run(&["reset", "--hard", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(
        sql(pg, "boxlite", "SELECT count(*) FROM sandboxes"),
        vec!["0"]
    );
    assert_eq!(
        sql(
            pg,
            "boxlite",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'"
        ),
        vec!["0"]
    );
    assert_eq!(counts(pg), seeded, "re-seeded");
    assert_eq!(
        sql(
            pg,
            "boxlite",
            "SELECT count(*) FROM stack_schema_migrations"
        ),
        vec![migrations().to_string()]
    );
    let left = block_on(async {
        s3.list_objects_v2()
            .bucket("boxlite")
            .send()
            .await
            .expect("list")
            .contents()
            .len()
    });
    assert_eq!(left, 0, "buckets emptied");
    // Garage's bootstrap repairs what is missing whenever minio starts.
    block_on(async {
        s3.delete_bucket()
            .bucket("backups")
            .send()
            .await
            .expect("delete bucket")
    });
    let r = p.run(&["restart", "minio"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let buckets = block_on(stack::s3::list_buckets(
        &env["S3_ENDPOINT"],
        "us-east-1",
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
    ))
    .expect("list buckets");
    assert!(
        buckets.contains(&"backups".to_string()),
        "the missing bucket is back: {buckets:?}"
    );
    assert_eq!(
        p.status()["postgres"]["state"],
        "running",
        "L1 keeps running"
    );
}

#[test]
fn nuke_deletes_the_state_dir_and_nothing_else() {
    let Data { p, .. } = project();
    assert_eq!(p.run(&["up", "postgres"]).code, 0);
    let above = p.dir.parent().expect("parent").join("sentinel-above");
    let beside = p.dir.join("sentinel-beside");
    let target = p.dir.join("linked-target");
    for f in [&above, &beside, &target] {
        std::fs::write(f, "keep me").expect("sentinel");
    }
    std::os::unix::fs::symlink(&target, p.state_dir().join("link-out")).expect("symlink");
    let r = p.run(&["reset", "--nuke", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!p.state_dir().exists(), "the state dir is gone");
    for f in [&above, &beside, &target] {
        assert_eq!(std::fs::read_to_string(f).expect("still there"), "keep me");
    }
    assert!(p.processes("").is_empty(), "everything was stopped");
    // Interrupted or not, running it again is fine.
    assert_eq!(p.run(&["reset", "--nuke", "--yes"]).code, 0);
    let r = p.run(&["up", "postgres"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("init: initdb"),
        "the next up is a cold start"
    );

    // A --state-dir that is not a state dir is never deleted.
    let r = p
        .cmd(&["--state-dir", ".", "reset", "--nuke", "--yes"])
        .output()
        .expect("run");
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(beside.exists());
}

pub(crate) fn kid(port: u16) -> String {
    block_on(async {
        let jwks: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/dex/keys"))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        jwks["keys"][0]["kid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

#[test]
fn rebuild_box_recreates_one_service_and_reruns_what_depends_on_it() {
    let Data { p, pg, dex } = project();
    assert_eq!(p.run(&["up"]).code, 0);
    let before = kid(dex);
    let r = p.run(&["rebuild-box", "dex"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let after = kid(dex);
    assert!(
        !before.is_empty() && before != after,
        "fresh signing keys: {before} -> {after}"
    );
    assert_eq!(p.status()["dex"]["healthy"], true);

    sql(pg, "boxlite", "CREATE TABLE scratch (x int)");
    let r = p.run(&["rebuild-box", "postgres"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("init: initdb"),
        "a fresh cluster: {}",
        r.stderr
    );
    assert_eq!(
        sql(
            pg,
            "boxlite",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'"
        ),
        vec!["0"]
    );
    assert_eq!(
        sql(
            pg,
            "boxlite",
            "SELECT count(*) FROM stack_schema_migrations"
        ),
        vec![migrations().to_string()],
        "schema reloaded"
    );
    assert_eq!(counts(pg), vec!["3", "3", "3", "1", "1"], "and seeded");

    let r = p.run(&["rebuild-box", "nope"]);
    assert_eq!(r.code, 2, "{}", r.text());
    assert!(
        r.stderr
            .contains("valid names are dex, minio, postgres, schema, seed"),
        "{}",
        r.stderr
    );
}

/// How many migrations the repository has (each a `NNNN_name.sql` in sql/migrations).
fn migrations() -> usize {
    std::fs::read_dir(crate::harness::repository().join("sql/migrations"))
        .expect("sql/migrations")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        .count()
}
