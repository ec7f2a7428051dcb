//! Stack definition errors: each kind is reported with file, line and key path, all at once,
//! with exit code 2 and nothing started.

use crate::harness::Project;

fn plan_error(p: &Project) -> String {
    let r = p.run(&["plan"]);
    assert_eq!(r.code, 2, "invalid definitions exit 2: {}", r.text());
    assert!(!r.text().contains("panicked"), "{}", r.text());
    assert!(
        !p.state_dir().exists(),
        "validation must not create the state dir"
    );
    r.stderr
}

#[test]
fn every_problem_is_reported_at_once_with_file_line_and_key_path() {
    let p = Project::new("broken");
    p.service(
        "a",
        "ports: { http: 39990 }\nprocess:\n  command: [python3]\n  stop_signal: SIGNOPE\n  stop_grace_period: soon\nhealthcheck:\n  tcp: { port: http }\n  interval: fast\nrestart: sometimes\ncolour: blue\n",
    )
    .service(
        "b",
        "ports: { web: 39990 }\ndepends_on:\n  a: { condition: service_ready }\nprocess:\n  command: \"python3 -m http.server\"\n",
    )
    .service("c", "description: nothing to run\n")
    .service("d", "process:\n  command: [\"${UNSET_VARIABLE_FOR_TEST}\"]\n")
    .service("e", "depends_on:\n  c: { condition: service_healthy }\nprocess:\n  command: [true]\n")
    .service("f", "process: [unclosed\n");
    insta::assert_snapshot!(plan_error(&p));
}

#[test]
fn cycles_name_every_member_in_order_and_unknown_dependencies_name_the_target() {
    let p = Project::new("cycles");
    for (n, dep) in [("x", "y"), ("y", "z"), ("z", "x"), ("w", "nowhere")] {
        p.service(
            n,
            &format!("depends_on:\n  {dep}: {{ condition: service_started }}\nprocess:\n  command: [sleep, \"60\"]\n"),
        );
    }
    insta::assert_snapshot!(plan_error(&p));
}

#[test]
fn unknown_stack_keys_bad_backend_and_missing_env_file_are_reported() {
    let p = Project::new("badstack");
    p.write(
        "stack.yaml",
        "name: badstack\nbackend: docker\nenv_file: missing.env\nvolumes: []\n",
    )
    .service("ok", "process:\n  command: [sleep, \"1\"]\n");
    insta::assert_snapshot!(plan_error(&p));
}

/// Each probe kind takes only its own keys, a probe problem is reported once, and a service
/// name defined twice names the first file.
#[test]
fn probes_take_only_their_own_keys_and_names_are_defined_once() {
    let p = Project::new("probes");
    p.service(
        "a",
        "ports: { http: 39992 }\nprocess:\n  command: [sleep, \"60\"]\nhealthcheck:\n  tcp: { port: http, user: postgres }\n",
    )
    .service(
        "b",
        "ports: { http: 39993, admin: 39994 }\nprocess:\n  command: [sleep, \"60\"]\nhealthcheck:\n  redis: {}\n",
    )
    .service(
        "c",
        "process:\n  command: [sleep, \"60\"]\nhealthcheck:\n  s3: { port: 1 }\n  interval: 1s\n",
    )
    .service(
        "d",
        "name: c\nprocess:\n  command: [sleep, \"60\"]\nhealthcheck:\n  retries: 3\n",
    );
    insta::assert_snapshot!(plan_error(&p));
}

/// The box options and per-backend init steps are checked like everything else: an unknown
/// backend, `auto` on a step, a box port that is not one of the service's, a bad volume.
#[test]
fn box_options_and_step_backends_are_validated() {
    let p = Project::new("boxbad");
    p.service(
        "a",
        "ports: { http: 39991 }\nimage: busybox\nbox:\n  ports: { grpc: 9000 }\n  volumes: [data]\n  environment: { MODE: box }\n  memory: lots\nprocess:\n  command: [sleep, \"60\"]\ninit:\n  - command: [\"true\"]\n    backend: docker\n  - command: [\"true\"]\n    backend: auto\n",
    );
    let err = plan_error(&p);
    for want in [
        "init[0].backend",
        "unknown backend `docker`",
        "init[1].backend",
        "leave `backend` out to run it on both",
        "box.ports.grpc",
        "box.volumes[0]",
        "box.memory",
    ] {
        assert!(err.contains(want), "`{want}` in:\n{err}");
    }
    assert!(
        !err.contains("box.environment"),
        "box.environment is a valid key:\n{err}"
    );
}

#[test]
fn interpolation_reads_env_file_defaults_ports_and_dirs() {
    let p = Project::new("interp");
    p.write("stack.yaml", "name: interp\nbackend: process\nenv_file: .env\n")
        .write(".env", "GREETING=hello\nPORT_FROM_ENV=39991\n")
        .service(
            "web",
            "ports: { http: \"${PORT_FROM_ENV}\" }\nenvironment:\n  MSG: \"${GREETING} from ${port.http}\"\n  DEFAULTED: \"${NOT_SET_ANYWHERE:-fallback}\"\n  DATA: \"${data_dir}\"\n  LITERAL: \"$$HOME\"\nprocess:\n  command: [sleep, \"60\"]\n",
        );
    let cwd = p.dir.clone();
    let stack = stack::spec::Stack::load(&stack::spec::LoadOptions {
        file: None,
        cwd,
        state_dir: Some(p.state_dir()),
        env: std::collections::HashMap::new(),
        stack_exe: None,
    })
    .expect("valid");
    let web = &stack.services["web"];
    assert_eq!(web.ports["http"], 39991);
    assert_eq!(web.environment["MSG"], "hello from 39991");
    assert_eq!(web.environment["DEFAULTED"], "fallback");
    assert_eq!(
        web.environment["DATA"],
        p.state_dir().join("data/web").display().to_string()
    );
    assert_eq!(web.environment["LITERAL"], "$HOME");
}

#[test]
fn the_process_environment_wins_over_the_env_file() {
    let p = Project::new("precedence");
    p.write("stack.yaml", "name: precedence\nenv_file: .env\n")
        .write(".env", "WHO=file\n")
        .service(
            "s",
            "environment: { WHO: \"${WHO}\" }\nprocess:\n  command: [sleep, \"1\"]\n",
        );
    let load = |env: &[(&str, &str)]| {
        stack::spec::Stack::load(&stack::spec::LoadOptions {
            file: None,
            cwd: p.dir.clone(),
            state_dir: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stack_exe: None,
        })
        .expect("valid")
        .services["s"]
            .environment["WHO"]
            .clone()
    };
    assert_eq!(load(&[]), "file");
    assert_eq!(load(&[("WHO", "shell")]), "shell");
}

#[test]
fn plan_orders_chains_diamonds_and_independent_sets() {
    let p = Project::new("shapes");
    let svc = |deps: &[&str]| sleeper(deps, "service_started");
    // diamond: top <- (left, right) <- bottom; chain: c1 <- c2 <- c3; lone: solo
    p.service("bottom", &svc(&[]))
        .service("left", &svc(&["bottom"]))
        .service("right", &svc(&["bottom"]))
        .service("top", &svc(&["left", "right"]))
        .service("c1", &svc(&[]))
        .service("c2", &svc(&["c1"]))
        .service("c3", &svc(&["c2"]))
        .service("solo", &svc(&[]));
    let waves = |args: &[&str]| {
        let mut a = vec!["plan", "--json"];
        a.extend_from_slice(args);
        let r = p.run(&a);
        assert_eq!(r.code, 0, "{}", r.text());
        serde_json::from_value::<Vec<Vec<String>>>(r.json()["waves"].clone()).expect("waves")
    };
    assert_eq!(
        waves(&[]),
        vec![
            vec!["bottom", "c1", "solo"],
            vec!["c2", "left", "right"],
            vec!["c3", "top"]
        ]
    );
    assert_eq!(
        waves(&["top"]),
        vec![vec!["bottom"], vec!["left", "right"], vec!["top"]]
    );
    assert_eq!(waves(&["c2", "solo"]), vec![vec!["c1", "solo"], vec!["c2"]]);
    let r = p.run(&["plan", "nope"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no service named `nope`") && r.stderr.contains("valid names are"),
        "{}",
        r.stderr
    );
    let text = p.run(&["plan", "top"]).stdout;
    assert_eq!(
        text,
        "wave 1: bottom\nwave 2: left (after bottom started), right (after bottom started)\nwave 3: top (after left started, right started)\n"
    );
}

#[test]
fn the_critical_path_follows_the_slowest_chain() {
    let p = Project::new("critical");
    // db -> migrate -> app, cache -> app, and a lone search service; each waits until its
    // dependencies are ready.
    let svc = |deps: &[&str]| sleeper(deps, "service_healthy");
    p.service("db", &svc(&[]))
        .service("migrate", &svc(&["db"]))
        .service("cache", &svc(&[]))
        .service("app", &svc(&["migrate", "cache"]))
        .service("search", &sleeper(&[], ""));
    let stack = p.load();
    let all = stack::graph::closure(&stack, &[]);
    let names = |set: std::collections::BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
    let cost = stack::graph::Cost::ready;
    // Unknown timings: hops decide.
    assert_eq!(
        names(stack::graph::critical_path(&stack, &all, |_| cost(1000))),
        vec!["app", "db", "migrate"]
    );
    // A slow cache and a slower search take over.
    let w = |n: &str| match n {
        "cache" => cost(5000),
        "search" => cost(9000),
        _ => cost(100),
    };
    assert_eq!(
        names(stack::graph::critical_path(&stack, &all, w)),
        vec!["search"]
    );
    let w = |n: &str| cost(if n == "cache" { 5000 } else { 100 });
    assert_eq!(
        names(stack::graph::critical_path(&stack, &all, w)),
        vec!["app", "cache"]
    );
}

#[test]
fn a_dependent_that_needs_a_service_only_started_does_not_wait_out_its_start() {
    let p = Project::new("critical-started");
    // The proxy starts once the slow identity provider is spawned, as caddy does with dex.
    p.service("idp", &sleeper(&[], ""))
        .service("proxy", &sleeper(&["idp"], "service_started"))
        .service("db", &sleeper(&[], ""))
        .service("app", &sleeper(&["db"], "service_healthy"));
    let stack = p.load();
    let all = stack::graph::closure(&stack, &[]);
    let cost = |n: &str| match n {
        "idp" => stack::graph::Cost {
            started: 20,
            ready: 1000,
        },
        "proxy" => stack::graph::Cost::ready(300),
        "db" => stack::graph::Cost {
            started: 50,
            ready: 500,
        },
        _ => stack::graph::Cost::ready(400),
    };
    let at = stack::graph::earliest(&stack, &all, cost);
    assert_eq!(
        at["proxy"],
        (20, 320),
        "the proxy starts when idp is spawned"
    );
    assert_eq!(at["app"], (500, 900), "the app waits until db is ready");
    assert_eq!(at["idp"], (0, 1000));
    // idp alone is the long pole: the proxy has 680 of slack, db and app 100 (within 10%).
    let critical: Vec<String> = stack::graph::critical_path(&stack, &all, cost)
        .into_iter()
        .collect();
    assert_eq!(critical, vec!["app", "db", "idp"]);
    // A proxy slower than idp's whole start puts idp's spawn, not its start, on its path.
    let slow_proxy = |n: &str| match n {
        "proxy" => stack::graph::Cost::ready(2000),
        other => cost(other),
    };
    let at = stack::graph::earliest(&stack, &all, slow_proxy);
    assert_eq!(at["proxy"], (20, 2020));
    let critical: Vec<String> = stack::graph::critical_path(&stack, &all, slow_proxy)
        .into_iter()
        .collect();
    assert_eq!(critical, vec!["idp", "proxy"]);
}

#[test]
fn a_long_start_beside_the_critical_path_is_urgent_too() {
    let p = Project::new("urgent");
    // idp is the long pole; store is shorter but still long; cache is quick; app needs cache
    // ready. None depends on another, except app.
    p.service("idp", &sleeper(&[], ""))
        .service("store", &sleeper(&[], ""))
        .service("cache", &sleeper(&[], ""))
        .service("app", &sleeper(&["cache"], "service_healthy"));
    let stack = p.load();
    let all = stack::graph::closure(&stack, &[]);
    let names = |set: std::collections::BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
    let cost = |n: &str| {
        stack::graph::Cost::ready(match n {
            "idp" => 1000,
            "store" => 600,
            "cache" => 100,
            _ => 50,
        })
    };
    let (slack, total) = stack::graph::slack(&stack, &all, cost);
    assert_eq!(total, 1000);
    assert_eq!(slack["idp"], 0);
    assert_eq!(slack["store"], 400);
    assert_eq!(
        slack["cache"], 850,
        "cache must be ready before app's latest start"
    );
    assert_eq!(slack["app"], 850);
    // Only idp is on the critical path; store has less slack (400) than its own start (600),
    // so held back for the CPU it would end the start; cache and app have plenty.
    assert_eq!(
        names(stack::graph::critical_path(&stack, &all, cost)),
        vec!["idp"]
    );
    assert_eq!(
        names(stack::graph::urgent(&stack, &all, cost)),
        vec!["idp", "store"]
    );
    // A store with more slack than its start waits like the rest.
    let short_store = |n: &str| match n {
        "store" => stack::graph::Cost::ready(400),
        other => cost(other),
    };
    assert_eq!(
        names(stack::graph::urgent(&stack, &all, short_store)),
        vec!["idp"]
    );
}

/// A service that sleeps, started after `deps` once they reach `condition`. Its healthcheck lets
/// others wait for it to be healthy.
fn sleeper(deps: &[&str], condition: &str) -> String {
    let mut y =
        String::from("process:\n  command: [sleep, \"60\"]\nhealthcheck:\n  exec: [\"true\"]\n");
    if !deps.is_empty() {
        y.push_str("depends_on:\n");
        for d in deps {
            y.push_str(&format!("  {d}: {{ condition: {condition} }}\n"));
        }
    }
    y
}

#[test]
fn an_info_url_must_be_http() {
    let p = Project::new("info-url");
    p.service(
        "web",
        "process:\n  command: [sleep, \"60\"]\ninfo: ftp://127.0.0.1/info\n",
    );
    let err = plan_error(&p);
    assert!(
        err.contains(
            "services/web.yaml:3: `info`: `ftp://127.0.0.1/info` must start with `http://` or `https://`"
        ),
        "{err}"
    );
}
