//! A sandbox's whole life through the runner's API, and a missing image.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{for_root, free_port, read, unique, wait_for};

#[tokio::test]
async fn a_sandbox_lives_and_is_deleted_through_the_api() {
    let Some((_registry, runner)) = for_root(free_port()).await else {
        return;
    };
    let id = unique("life");

    let (status, created) = runner
        .post("/sandboxes", json!({"id": id, "image": "boxlite/busybox:latest", "cpu": 0.5, "memoryMib": 128, "env": {"GREETING": "hi"}, "labels": {"team": "a"}}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["id"].as_str(), created["state"].as_str()),
        (Some(id.as_str()), Some("started"))
    );
    assert_eq!(created["image"], "boxlite/busybox:latest");
    assert!(created["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));

    assert_eq!(
        runner.exec(&id, "uname -n").await,
        (0, format!("{id}\n"), String::new())
    );
    let (status, out) = runner
        .post(&format!("/sandboxes/{id}/exec"), json!({"command": "echo $GREETING $EXTRA; pwd; echo err >&2; exit 3", "cwd": "/tmp", "env": {"EXTRA": "there"}, "timeout": 10}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        out,
        json!({"exitCode": 3, "result": "hi there\n/tmp\n", "stderr": "err\n"})
    );

    // Files: upload, download, and paths leaving the root refused.
    let files = |path: &str| format!("/sandboxes/{id}/files?path={path}");
    let (status, written) = read(
        runner
            .call(Method::PUT, &files("/srv/note.txt"))
            .body("a note"),
    )
    .await;
    assert_eq!(
        (status, written),
        (200, json!({"path": "/srv/note.txt", "size": 6}))
    );
    let got = runner
        .call(Method::GET, &files("/srv/note.txt"))
        .send()
        .await
        .expect("download");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.expect("bytes").as_ref(), b"a note");
    assert_eq!(runner.exec(&id, "cat /srv/note.txt").await.1, "a note");
    for bad in ["/../../etc/passwd", "/srv/../../etc/shadow", "srv/note.txt"] {
        let (status, body) = read(runner.call(Method::GET, &files(bad))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let (status, body) = read(runner.call(Method::PUT, &files(bad)).body("x")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A symlink pointing out of the root resolves inside it: the host's file is never read.
    let host_file = runner.home.path().join("runner.log");
    assert!(host_file.is_file());
    runner
        .exec(
            &id,
            &format!("ln -s /../../../..{} /srv/out", host_file.display()),
        )
        .await;
    let (status, _) = read(runner.call(Method::GET, &files("/srv/out"))).await;
    assert_eq!(
        status, 404,
        "the link resolves inside the sandbox, where that file is not"
    );

    // A server in the sandbox, reached through its own network namespace.
    runner
        .exec(&id, "mkdir -p /www && echo hello-from-httpd > /www/index.html && busybox httpd -p 8080 -h /www")
        .await;
    let page = wait_for("httpd through the runner", Duration::from_secs(10), || {
        let req = runner.call(
            Method::GET,
            &format!("/sandboxes/{id}/ports/8080/index.html?x=1"),
        );
        async move {
            let r = req.send().await.ok()?;
            (r.status() == 200).then_some(())?;
            r.text().await.ok()
        }
    })
    .await;
    assert_eq!(page, "hello-from-httpd\n");
    let root = runner
        .call(Method::GET, &format!("/sandboxes/{id}/ports/8080/"))
        .send()
        .await
        .expect("root");
    assert_eq!(root.text().await.expect("text"), "hello-from-httpd\n");

    let (status, list) = runner.get("/sandboxes").await;
    assert_eq!(
        (status, list),
        (
            200,
            json!([{"id": id, "state": "started", "image": "boxlite/busybox:latest"}])
        )
    );

    // Stop: nothing runs or is mounted, the files stay.
    let (status, body) = runner
        .post(&format!("/sandboxes/{id}/stop"), json!(null))
        .await;
    assert_eq!((status, body), (200, json!({"id": id, "state": "stopped"})));
    runner.assert_nothing_running();
    assert_eq!(
        runner.get(&format!("/sandboxes/{id}")).await.1["state"],
        "stopped"
    );
    let (status, body) = runner
        .post(&format!("/sandboxes/{id}/exec"), json!({"command": "true"}))
        .await;
    assert_eq!(status, 409, "exec on a stopped sandbox: {body}");

    let (status, body) = runner
        .post(&format!("/sandboxes/{id}/start"), json!(null))
        .await;
    assert_eq!((status, body), (200, json!({"id": id, "state": "started"})));
    assert_eq!(
        runner.exec(&id, "cat /srv/note.txt; uname -n").await.1,
        format!("a note{id}\n")
    );

    let (status, _) = read(runner.call(Method::DELETE, &format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 204);
    assert!(runner.mounts().is_empty(), "{:?}", runner.mounts());
    assert!(runner.runc_state().is_empty());
    assert!(runner.sandbox_dirs().is_empty());
    // The sandbox's init was the runner's child (its subreaper): reaped, not left a zombie.
    let what = "the sandbox's processes gone and its init reaped by the runner";
    wait_for(what, Duration::from_secs(10), || {
        let left = [runner.sandbox_processes(), runner.zombie_children()].concat();
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert_eq!(runner.get(&format!("/sandboxes/{id}")).await.0, 404);
    assert_eq!(runner.get("/health").await.1["sandboxes"], 0);
}

#[tokio::test]
async fn an_image_not_in_the_registry_is_a_404_naming_it_and_creates_nothing() {
    let Some((_registry, runner)) = for_root(free_port()).await else {
        return;
    };
    let id = unique("missing");
    for image in ["boxlite/nothing:latest", "boxlite/busybox:no-such-tag"] {
        let (status, body) = runner
            .post("/sandboxes", json!({"id": id, "image": image}))
            .await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(image)),
            "{body}"
        );
    }
    assert!(runner.sandbox_dirs().is_empty());
    assert!(runner.runc_state().is_empty() && runner.mounts().is_empty());
    assert_eq!(runner.get(&format!("/sandboxes/{id}")).await.0, 404);
    assert_eq!(runner.get("/sandboxes").await.1, json!([]));
    // The id is free: the same id with a real image works.
    runner.create(&id).await;
}
