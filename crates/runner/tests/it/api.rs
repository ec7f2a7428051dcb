//! The API's edges: the token, and bad input of every kind answered 4xx `{"error"}`.

use reqwest::Method;
use serde_json::json;

use crate::support::{for_root, free_port, read, unique, TOKEN};

#[test]
fn a_missing_or_malformed_setting_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .env_clear()
        .env("RUNNER_NAME", "Runner A")
        .env("RUNNER_PORT", "99999")
        .env("RUNNER_HOME", "/tmp/x")
        .env("CONTROL_PLANE_URL", "http://127.0.0.1:23001")
        .output()
        .expect("run the runner");
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    for what in [
        "`RUNNER_NAME`",
        "`RUNNER_PORT` is `99999`",
        "`RUNNER_TOKEN` is not set",
        "`REGISTRY_URL` is not set",
    ] {
        assert!(err.contains(what), "{what} in: {err}");
    }
}

#[tokio::test]
async fn every_call_needs_the_token_and_bad_input_is_a_4xx() {
    let Some((_registry, runner)) = for_root(free_port()).await else {
        return;
    };
    let http = reqwest::Client::new();

    // The token: none, a wrong one, another scheme.
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token"),
        Some(&format!("Basic {TOKEN}")[..]),
    ] {
        for (method, path) in [
            (Method::GET, "/health"),
            (Method::GET, "/sandboxes"),
            (Method::POST, "/sandboxes/x/exec"),
            (Method::GET, "/nowhere"),
        ] {
            let mut req = http.request(method.clone(), runner.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let (status, body) = read(req).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}");
            assert!(
                body["error"].as_str().is_some_and(|e| e.contains("token")),
                "{body}"
            );
        }
    }
    // The liveness probe needs none and says nothing about the runner.
    let (status, body) = read(http.get(runner.url("/healthz"))).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = runner.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], runner.name.as_str());
    assert_eq!(body["sandboxes"], 0);
    // Started without a boot-probe verdict, `auto` runs sandboxes with runc, and says so.
    assert_eq!(body["driver"], "runc");

    let id = unique("bad");
    runner.create(&id).await;
    let exec = format!("/sandboxes/{id}/exec");
    let files = |q: &str| format!("/sandboxes/{id}/files{q}");
    let ports = |p: &str| format!("/sandboxes/{id}/ports/{p}/");
    let big = "x".repeat(100 << 10);
    let cases: Vec<(&str, String, serde_json::Value, u16)> = vec![
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "a1", "image": "boxlite/busybox:latest", "extra": 1}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": 7, "image": "boxlite/busybox:latest"}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"image": "boxlite/busybox:latest"}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "Not_An_Id", "image": "boxlite/busybox:latest"}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "a2", "image": "other.registry:5000/x:1"}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "a3", "image": "boxlite/busybox:latest", "cpu": -1}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "a4", "image": "boxlite/busybox:latest", "memoryMib": "lots"}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "a5", "image": "boxlite/busybox:latest", "env": {"A=B": "c"}}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": "a6", "image": "UPPER/case"}),
            400,
        ),
        (
            "POST",
            "/sandboxes".into(),
            json!({"id": id, "image": "boxlite/busybox:latest"}),
            409,
        ),
        ("POST", exec.clone(), json!({"command": 5}), 400),
        (
            "POST",
            exec.clone(),
            json!({"command": "true", "timeout": 0}),
            400,
        ),
        (
            "POST",
            exec.clone(),
            json!({"command": "true", "cwd": "relative"}),
            400,
        ),
        (
            "POST",
            exec.clone(),
            json!({"command": "true", "shell": "bash"}),
            400,
        ),
        ("POST", exec.clone(), json!({"command": ""}), 400),
        ("POST", exec.clone(), json!({"command": big}), 413),
        (
            "POST",
            "/sandboxes/no-such-sandbox/exec".into(),
            json!({"command": "true"}),
            404,
        ),
        (
            "POST",
            "/sandboxes/Bad..Id/exec".into(),
            json!({"command": "true"}),
            400,
        ),
        ("GET", "/sandboxes/no-such-sandbox".into(), json!(null), 404),
        (
            "DELETE",
            "/sandboxes/no-such-sandbox".into(),
            json!(null),
            404,
        ),
        (
            "POST",
            "/sandboxes/no-such-sandbox/stop".into(),
            json!(null),
            404,
        ),
        (
            "POST",
            "/sandboxes/no-such-sandbox/start".into(),
            json!(null),
            404,
        ),
        ("GET", files(""), json!(null), 400),
        ("GET", files("?path=relative"), json!(null), 400),
        ("GET", files("?path=/etc&x=1"), json!(null), 400),
        ("GET", files("?path=/etc"), json!(null), 400),
        ("GET", files("?path=/no/such/file"), json!(null), 404),
        ("GET", ports("99999"), json!(null), 400),
        ("GET", ports("http"), json!(null), 400),
        ("GET", ports("8080"), json!(null), 502),
        ("PATCH", "/sandboxes".into(), json!(null), 405),
    ];
    for (method, path, body, want) in cases {
        let mut req = runner.call(method.parse().expect("method"), &path);
        if !body.is_null() {
            req = req.json(&body);
        }
        let (status, answer) = read(req).await;
        assert_eq!(status, want, "{method} {path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
    }
    // Not JSON at all, and a huge upload.
    let (status, _) = read(
        runner
            .call(Method::POST, "/sandboxes")
            .body("{")
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = read(runner.call(Method::POST, "/sandboxes").body("id=x")).await;
    assert_eq!(status, 415);
    let upload = format!("/sandboxes/{id}/files?path=/tmp/big");
    let (status, body) = read(
        runner
            .call(Method::PUT, &upload)
            .body(vec![0u8; (64 << 20) + 1]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    // Still serving, and no 500 on the way.
    assert_eq!(runner.exec(&id, "echo ok").await.1, "ok\n");
    assert!(!runner.log().contains("panicked"), "{}", runner.log());
    let status = read(runner.call(Method::DELETE, &format!("/sandboxes/{id}")))
        .await
        .0;
    assert_eq!(status, 204);
}
