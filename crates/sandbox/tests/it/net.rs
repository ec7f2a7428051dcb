//! Ports inside sandboxes, reached from the host through each sandbox's own network namespace.

use std::time::Duration;

use sandbox::{CreateOptions, Driver, Init, NetError, SandboxError, SandboxId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{exec_opts, unique_id, wait_for, Fixture};

/// `GET /` on port 8080 of the sandbox; `None` until something answers.
async fn get(driver: &Driver, id: &SandboxId) -> Option<String> {
    let mut stream = driver
        .connect(id, 8080, Duration::from_secs(2))
        .await
        .ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: sandbox\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

#[tokio::test]
async fn two_sandboxes_both_serve_8080_and_are_told_apart() {
    let Some(fx) = Fixture::for_root("two_sandboxes_both_serve_8080_and_are_told_apart").await
    else {
        return;
    };
    let d = &fx.driver;
    // One starts httpd from an exec, the other runs it as its init.
    let a = unique_id("web-a");
    d.create(&a, &fx.image, &CreateOptions::default())
        .await
        .expect("create a");
    let opts = exec_opts();
    let started = d
        .exec(
            &a,
            "busybox httpd -f -p 8080 -h /www >/dev/null 2>&1 &",
            &opts,
        )
        .await
        .expect("exec");
    assert_eq!(started.exit_code, 0);
    let b = unique_id("web-b");
    let init = Init::Command(
        ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
    );
    d.create(
        &b,
        &fx.image,
        &CreateOptions {
            init,
            ..Default::default()
        },
    )
    .await
    .expect("create b");

    for id in [&a, &b] {
        d.write_file(
            id,
            "/www/index.html",
            format!("I am {id}\n").into_bytes(),
            0o644,
        )
        .await
        .expect("index");
    }
    for id in [&a, &b] {
        let response = wait_for("httpd to answer", Duration::from_secs(10), || get(d, id)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.ends_with(&format!("I am {id}\n")),
            "{id} answered: {response}"
        );
    }

    // A port nothing listens on is refused, in the sandbox's namespace as on any host.
    match d.connect(&a, 8081, Duration::from_secs(2)).await {
        Err(SandboxError::Net(_, NetError::Connect { port: 8081, .. })) => {}
        other => panic!("expected a refused connection, got {other:?}"),
    }
    for id in [&a, &b] {
        d.delete(id).await.expect("delete");
    }
    assert!(matches!(
        d.connect(&a, 8080, Duration::from_secs(1)).await,
        Err(SandboxError::NotFound { .. })
    ));
}
