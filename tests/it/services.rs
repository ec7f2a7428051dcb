//! The default PostgreSQL and Redis services, run from the repository's own service files on
//! free ports, talked to with real clients (sqlx, redis-rs).

use std::time::Duration;

use sqlx::{Connection, Row};

use crate::harness::{block_on, wait_until, Project};

fn project() -> (Project, u16, u16) {
    let (pg, rd) = (crate::harness::free_port(), crate::harness::free_port());
    let p = Project::new("defaults");
    p.default_service("postgres", 25432, pg)
        .default_service("redis", 26379, rd);
    (p, pg, rd)
}

async fn pg(port: u16) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&format!(
        "postgres://boxlite:boxlite@127.0.0.1:{port}/boxlite"
    ))
    .await
    .expect("connect to postgres")
}

async fn rd(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

#[test]
fn postgres_and_redis_keep_their_data_across_down_and_up() {
    let (p, pg_port, rd_port) = project();
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("init: initdb"),
        "first start initialises the cluster: {}",
        r.stderr
    );
    block_on(async {
        let mut c = pg(pg_port).await;
        sqlx::query("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            .execute(&mut c)
            .await
            .expect("create");
        sqlx::query("INSERT INTO notes VALUES (1, 'kept')")
            .execute(&mut c)
            .await
            .expect("insert");
        c.close().await.expect("close");
        let mut r = rd(rd_port).await;
        redis::cmd("SET")
            .arg("greeting")
            .arg("hello")
            .query_async::<()>(&mut r)
            .await
            .expect("set");
    });
    let st = p.status();
    assert_eq!(
        st["postgres"]["program"], "postgres 15.18",
        "status names the program"
    );
    assert!(
        st["redis"]["program"]
            .as_str()
            .unwrap_or("")
            .starts_with("Redis 7."),
        "{}",
        st["redis"]
    );

    assert_eq!(p.run(&["down"]).code, 0);
    assert!(!crate::harness::listening(pg_port) && !crate::harness::listening(rd_port));
    let log = std::fs::read_to_string(p.state_dir().join("logs/postgres.log")).expect("log");
    assert!(
        log.contains("SIGINT to process group"),
        "postgres gets its fast-shutdown signal"
    );
    assert!(log.contains("stopped (exit 0)"), "and stops cleanly: {log}");

    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        !r.stderr.contains("init: initdb"),
        "initdb runs only on an empty data dir"
    );
    block_on(async {
        let mut c = pg(pg_port).await;
        let row = sqlx::query("SELECT body FROM notes WHERE id = 1")
            .fetch_one(&mut c)
            .await
            .expect("select");
        assert_eq!(row.get::<String, _>(0), "kept");
        let mut r = rd(rd_port).await;
        let v: String = redis::cmd("GET")
            .arg("greeting")
            .query_async(&mut r)
            .await
            .expect("get");
        assert_eq!(v, "hello");
    });
}

#[test]
fn a_sigkilled_postgres_is_restarted_healthy_with_its_data() {
    let (p, pg_port, _) = project();
    assert_eq!(p.run(&["up", "postgres"]).code, 0);
    block_on(async {
        let mut c = pg(pg_port).await;
        sqlx::query("CREATE TABLE t (x int)")
            .execute(&mut c)
            .await
            .expect("create");
        sqlx::query("INSERT INTO t VALUES (42)")
            .execute(&mut c)
            .await
            .expect("insert");
    });
    let first = p.pid("postgres").expect("pid");
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill");
    assert!(wait_until(Duration::from_secs(15), || {
        let st = p.status();
        st["postgres"]["healthy"] == true && st["postgres"]["pid"].as_u64() != Some(first as u64)
    }));
    block_on(async {
        let mut c = pg(pg_port).await;
        let row = sqlx::query("SELECT x FROM t")
            .fetch_one(&mut c)
            .await
            .expect("select");
        assert_eq!(row.get::<i32, _>(0), 42);
    });
    assert_eq!(
        p.processes("postgres -D").len(),
        1,
        "exactly one postmaster"
    );
    let st = p.status();
    assert_eq!(st["postgres"]["restarts"], 1);
    assert_eq!(
        st["redis"]["state"], "stopped",
        "`up postgres` did not start redis"
    );
}

#[test]
fn postgres_runs_unprivileged_and_binds_loopback_only() {
    let (p, pg_port, rd_port) = project();
    assert_eq!(p.run(&["up"]).code, 0);
    let pid = p.pid("postgres").expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default()
        .to_string();
    if crate::harness::is_root() {
        assert!(
            uid_line.split_whitespace().nth(1).is_some_and(|u| u != "0"),
            "not root: {uid_line}"
        );
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("tcp table");
    for port in [pg_port, rd_port] {
        let hex = format!(":{port:04X}");
        let listeners: Vec<&str> = tcp
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&hex) && f[3] == "0A"
            })
            .collect();
        assert!(!listeners.is_empty(), "something listens on {port}");
        for l in listeners {
            assert!(
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .starts_with("0100007F"),
                "loopback only: {l}"
            );
        }
    }
}

#[test]
fn killing_stack_during_a_first_start_then_rerunning_leaves_one_postgres_and_one_redis() {
    let (p, pg_port, rd_port) = project();
    for attempt in 0..2 {
        let mut up = p
            .cmd(&["up"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn up");
        // Kill it while postgres is still initialising or starting (redis is quick).
        assert!(wait_until(
            Duration::from_secs(20),
            || crate::harness::listening(rd_port) || up.try_wait().ok().flatten().is_some()
        ));
        std::process::Command::new("kill")
            .args(["-9", &up.id().to_string()])
            .status()
            .expect("kill");
        let _ = up.wait();
        let _ = attempt;
    }
    // The interrupted step's leader dies with `stack`; what it forked (initdb) is killed by
    // the next run before it touches the data dir.
    // Two concurrent runs after the kill: they serialise and converge on one copy of each.
    let runs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            p.cmd(&["up"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn up")
        })
        .collect();
    for r in runs {
        let out = r.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        p.processes("postgres -D").len(),
        1,
        "exactly one postmaster"
    );
    // redis rewrites its process title to `redis-server 127.0.0.1:PORT`.
    let redis_title = format!("127.0.0.1:{rd_port}");
    assert_eq!(
        crate::harness::processes_matching(&["redis-server", &redis_title]).len(),
        1,
        "exactly one redis"
    );
    assert!(
        p.processes("initdb").is_empty(),
        "no init step is left running"
    );
    block_on(async {
        let mut c = pg(pg_port).await;
        let one: (i32,) = sqlx::query_as("SELECT 1")
            .fetch_one(&mut c)
            .await
            .expect("query");
        assert_eq!(one.0, 1);
    });
}
