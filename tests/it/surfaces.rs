//! Snapshots of what users read: `--help` of every command, `plan`, `status` (table and JSON),
//! the preflight refusal naming a port's holder, the unhealthy error with its log lines, and the
//! plan of each reset tier. Temp paths, pids, ports, times and versions are filtered, so a
//! snapshot changes only when a message does. After an intended change:
//! `INSTA_UPDATE=always cargo test --test it surfaces::`, then review `git diff`.

use std::net::TcpListener;

use crate::harness::{bin, free_port, Project};

/// Filters for what differs between runs: the project's temp dir, its services' ports, pids,
/// instance ids, durations, timestamps, the programs' paths on this machine, and a port holder's
/// command line (the test binary's).
fn filters(p: &Project) -> Vec<(String, String)> {
    let root = p.dir.parent().unwrap_or(&p.dir).display().to_string();
    let mut out = vec![(regex_escape(&root), "[TMP]".to_string())];
    for svc in p.load().services.values() {
        for port in svc.ports.values() {
            out.push((format!(r"\b{port}\b"), "[PORT]".into()));
        }
    }
    for program in ["python3", "true"] {
        if let Ok(path) = which::which(program) {
            out.push((
                regex_escape(&path.display().to_string()),
                format!("[{program}]"),
            ));
        }
    }
    let rules: [(&str, &str); 11] = [
        (
            r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
            "[TIME]",
        ),
        (r"\bpid \d+", "pid [PID]"),
        (r"`kill \d+`", "`kill [PID]`"),
        (r#""pid": \d+"#, r#""pid": [PID]"#),
        (r#""id": "[0-9a-f]+""#, r#""id": "[ID]""#),
        (r"\b\d+(\.\d+)?\s?(ms|s)\b", "[DURATION]"),
        (r#"_ms": \d+"#, r#"_ms": [MS]"#),
        (r"\bport \d+", "port [PORT]"),
        (r"\b\d+ probe attempts?", "[N] probe attempts"),
        (r" \(nice -?\d+ until ready[^)]*\)", ""),
        (
            r"\(\S*/it-[0-9a-f]{16}\b[^,]*, user \w+\)",
            "([TEST-BINARY], user [USER])",
        ),
    ];
    out.extend(
        rules
            .iter()
            .map(|(re, to)| (re.to_string(), to.to_string())),
    );
    out
}

/// The pids `status --json` reports, each a filter (the table shows them bare).
fn pid_filters(json: &serde_json::Value) -> Vec<(String, String)> {
    json["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["pid"].as_u64())
        .map(|pid| (format!(r"\b{pid}\b"), "[PID]".to_string()))
        .collect()
}

/// `path` as a regex matching itself.
fn regex_escape(path: &str) -> String {
    path.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Runs `f` with insta's filters for `p`, and `extra` ones.
fn with_filters(p: &Project, extra: Vec<(String, String)>, f: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    for (re, to) in extra.into_iter().chain(filters(p)) {
        settings.add_filter(&re, to);
    }
    settings.bind(f);
}

/// The whole help text of `stack` and of each command, in one snapshot.
#[test]
fn help_of_every_command() {
    let mut text = String::new();
    let commands = [
        "",
        "plan",
        "up",
        "down",
        "restart",
        "status",
        "logs",
        "doctor",
        "env",
        "schema",
        "schema rehearse",
        "seed",
        "reset",
        "backup",
        "backup ls",
        "restore",
        "rehearse",
        "rehearse backup",
        "rebuild-box",
        "box",
        "box verify",
    ];
    for cmd in commands {
        let mut c = std::process::Command::new(bin());
        let args: Vec<&str> = cmd.split_whitespace().chain(["--help"]).collect();
        // Help shows an environment variable's value: it must not show this machine's.
        let out = c
            .args(&args)
            .env("NO_COLOR", "1")
            .env_remove("STACK_STATE_DIR")
            .output()
            .expect("run");
        assert!(out.status.success(), "`stack {cmd} --help` exits 0");
        text.push_str(&format!("$ stack {}\n", args.join(" ")));
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push('\n');
    }
    insta::assert_snapshot!(text);
}

/// A small stack: two http services in a chain and a one-shot task.
fn chain() -> Project {
    let p = Project::new("surfaces");
    p.http_service("web", free_port(), &[])
        .http_service("api", free_port(), &["web"])
        .service(
            "migrate",
            "depends_on:\n  api: { condition: service_healthy }\nprocess:\n  command: [\"true\"]\nrestart: \"no\"\n",
        );
    p
}

#[test]
fn plan_table_and_json() {
    let p = chain();
    let table = p.run(&["plan"]);
    assert_eq!(table.code, 0, "{}", table.text());
    let json = p.run(&["--json", "plan"]);
    assert_eq!(json.code, 0, "{}", json.text());
    insta::assert_snapshot!(format!("{}\n{}", table.stdout, json.stdout));
}

#[test]
fn status_table_and_json_before_and_after_up() {
    let p = chain();
    let before = p.run(&["status"]);
    assert_eq!(before.code, 0, "{}", before.text());
    let up = p.run(&["up"]);
    assert_eq!(up.code, 0, "{}", up.text());
    let after = p.run(&["status"]);
    let json = p.run(&["status", "--json"]);
    assert_eq!(json.code, 0, "{}", json.text());
    // Column widths follow the pids' digits: spaces are collapsed so only the content counts.
    let mut extra = pid_filters(&json.json());
    extra.push((r"[ ]{2,}".into(), "  ".into()));
    with_filters(&p, extra, || {
        insta::assert_snapshot!(format!(
            "$ stack status (nothing started)\n{}\n$ stack status\n{}\n$ stack status --json\n{}",
            before.stdout, after.stdout, json.stdout
        ));
    });
}

#[test]
fn preflight_refusal_names_the_port_holder() {
    // Bound at once, not picked free then bound: another test may take a port in between.
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = holder.local_addr().expect("its port").port();
    let p = Project::new("preflight");
    p.http_service("web", port, &[]);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 4, "{}", r.text());
    drop(holder);
    with_filters(&p, Vec::new(), || insta::assert_snapshot!(r.stderr));
}

#[test]
fn unhealthy_error_shows_the_last_log_lines() {
    // A server that complains and never opens its port: its probe gives up, and the error shows
    // why from its log.
    let p = Project::new("unhealthy");
    p.service(
        "flaky",
        &format!(
            "ports: {{ http: {} }}\nprocess:\n  command: [sh, -c, \"echo 'cannot open config.toml' >&2; exec sleep 60\"]\nhealthcheck:\n  tcp: {{ port: http }}\n  interval: 100ms\n  retries: 2\n",
            free_port()
        ),
    );
    let r = p.run(&["--plain", "up"]);
    assert_eq!(r.code, 5, "{}", r.text());
    let error: Vec<&str> = r
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("error:"))
        .collect();
    // The service's own lines and the supervisor's come through different pipes, so their
    // order in the log may vary: the snapshot sorts the log lines.
    let (mut log, rest): (Vec<&str>, Vec<&str>) = error.iter().partition(|l| l.starts_with("    "));
    log.sort_unstable();
    let text = format!(
        "{}\n{}\n{}",
        rest[..2].join("\n"),
        log.join("\n"),
        rest[2..].join("\n")
    );
    with_filters(&p, Vec::new(), || insta::assert_snapshot!(text));
}

/// The default data services, copied with their migrations: what every reset tier plans on.
fn data_project() -> Project {
    let p = Project::new("resets");
    p.default_service("postgres", 25432, free_port())
        .default_service_ports(
            "minio",
            &[
                (29000, free_port()),
                (29001, free_port()),
                (29002, free_port()),
            ],
        )
        .default_service_ports("schema", &[])
        .default_service_ports("seed", &[]);
    p.migrations();
    p
}

#[test]
fn the_plan_of_each_reset_tier() {
    let p = data_project();
    let mut text = String::new();
    for tier in ["--soft", "--hard", "--nuke"] {
        let r = p.run(&["reset", tier, "--dry-run"]);
        assert_eq!(r.code, 0, "{}", r.text());
        text.push_str(&format!("$ stack reset {tier} --dry-run\n{}\n", r.stderr));
    }
    let refused = p.run(&["reset", "--soft"]);
    assert_eq!(refused.code, 2, "{}", refused.text());
    text.push_str(&format!(
        "$ stack reset --soft </dev/null\n{}",
        refused.stderr
    ));
    with_filters(&p, Vec::new(), || insta::assert_snapshot!(text));
}

#[test]
fn status_shows_what_a_running_service_answers_at_its_info_url() {
    let p = Project::new("info");
    let (a, b) = (free_port(), free_port());
    p.http_service("plain", a, &[]);
    // What a runner answers at /info, served as a file; nested values are left out.
    p.service(
        "runner",
        &format!(
            "ports: {{ http: {b} }}\nprocess:\n  command: [python3, -m, http.server, \"${{port.http}}\", --bind, 127.0.0.1, --directory, services/www]\nhealthcheck:\n  http: {{ url: \"http://127.0.0.1:${{port.http}}/\" }}\n  interval: 100ms\ninfo: \"http://127.0.0.1:${{port.http}}/info.json\"\n"
        ),
    );
    p.write(
        "services/www/info.json",
        r#"{"sandboxes": 2, "capacity": 20, "driver": "runc", "detail": {"a": 1}}"#,
    );
    let stopped = p.run(&["status", "--json"]).json();
    assert!(
        stopped["services"]
            .as_array()
            .expect("services")
            .iter()
            .all(|s| s.get("info").is_none()),
        "nothing to ask a stopped service: {stopped}"
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let json = p.run(&["status", "--json"]).json();
    let of = |name: &str| of_json(&json, name);
    assert_eq!(
        of("runner")["info"],
        serde_json::json!({"sandboxes": 2, "capacity": 20, "driver": "runc"})
    );
    assert!(of("plain").get("info").is_none(), "{json}");
    let table = p.run(&["status"]);
    let header = table.stdout.lines().next().expect("header");
    assert!(header.ends_with("INFO"), "{}", table.stdout);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("runner"))
        .expect("runner row");
    assert!(
        row.ends_with("capacity=20 driver=runc sandboxes=2"),
        "{}",
        table.stdout
    );

    // An endpoint that stops answering JSON leaves the row as it is, never an error.
    p.write("services/www/info.json", "not json");
    let json = p.run(&["status", "--json"]).json();
    assert!(of_json(&json, "runner").get("info").is_none(), "{json}");
    assert_eq!(of_json(&json, "runner")["healthy"], true);
    let table = p.run(&["status"]);
    assert!(
        !table.stdout.contains("INFO"),
        "no INFO column when nothing answers: {}",
        table.stdout
    );
    assert_eq!(p.run(&["down"]).code, 0);
}

/// The row of service `name` in `status --json`.
fn of_json(json: &serde_json::Value, name: &str) -> serde_json::Value {
    json["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .expect("row")
}
