//! Files in a running sandbox through the host: round trips, and paths that try to leave it.

use std::time::Duration;

use sandbox::{CreateOptions, Driver, ExecOptions, FileError, SandboxError, SandboxId};

use crate::support::{self, unique_id, Fixture};

const LIMIT: u64 = 1 << 20;

fn refused(result: Result<impl std::fmt::Debug, SandboxError>) -> FileError {
    match result {
        Err(SandboxError::File { source, .. }) => source,
        other => panic!("expected a file error, got {other:?}"),
    }
}

/// Runs `cmd` in the sandbox, expecting success; returns its stdout.
async fn sh(d: &Driver, id: &SandboxId, cmd: &str) -> String {
    let opts = ExecOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let out = d.exec(id, cmd, &opts).await.expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn files_stay_inside_the_sandbox() {
    if support::skip_unless_root("files_stay_inside_the_sandbox") {
        return;
    }
    let fx = Fixture::busybox().await;
    let id = unique_id("files");
    fx.driver
        .create(&id, &fx.image, &CreateOptions::default())
        .await
        .expect("create");
    let d = &fx.driver;

    // Round trips both ways, parents created.
    d.write_file(
        &id,
        "/srv/app/hello.txt",
        b"from the host\n".to_vec(),
        0o644,
    )
    .await
    .expect("write");
    assert_eq!(
        sh(d, &id, "cat /srv/app/hello.txt").await,
        "from the host\n"
    );
    sh(d, &id, "echo from inside > /root/in.txt").await;
    assert_eq!(
        d.read_file(&id, "/root/in.txt", LIMIT).await.expect("read"),
        b"from inside\n"
    );
    d.write_file(&id, "/root/in.txt", b"replaced".to_vec(), 0o644)
        .await
        .expect("overwrite");
    assert_eq!(sh(d, &id, "cat /root/in.txt").await, "replaced");

    // `..` and relative paths are refused before anything is opened.
    assert!(matches!(
        refused(d.read_file(&id, "/root/../../etc/passwd", LIMIT).await),
        FileError::Escape(_)
    ));
    assert!(matches!(
        refused(d.write_file(&id, "/../x", b"x".to_vec(), 0o644).await),
        FileError::Escape(_)
    ));
    assert!(matches!(
        refused(d.read_file(&id, "etc/passwd", LIMIT).await),
        FileError::NotAbsolute(_)
    ));

    // Symlinks are resolved inside the root: absolute ones, and relative ones that climb.
    let host = tempfile::tempdir().expect("host dir");
    std::fs::write(host.path().join("secret"), "host secret").expect("host file");
    let host_dir = host.path().display().to_string();
    let link = |target: String, name: &str| format!("ln -s {target} /root/{name}");
    sh(d, &id, &link(host_dir.clone(), "to-host")).await;
    sh(
        d,
        &id,
        "ln -s ../../../../../../ /root/up && ln -s /etc/passwd /root/pw",
    )
    .await;
    assert!(matches!(
        refused(d.read_file(&id, "/root/to-host/secret", LIMIT).await),
        FileError::NotFound(_)
    ));
    let dangling = refused(
        d.write_file(&id, "/root/to-host/planted", b"x".to_vec(), 0o644)
            .await,
    );
    assert!(
        matches!(dangling, FileError::NotFound(_)),
        "the link's target does not exist in the sandbox"
    );
    sh(d, &id, &format!("mkdir -p {host_dir}")).await;
    d.write_file(&id, "/root/to-host/planted", b"x".to_vec(), 0o644)
        .await
        .expect("write through link");
    assert!(!host.path().join("planted").exists(), "written on the host");
    assert_eq!(
        sh(d, &id, &format!("cat {host_dir}/planted")).await,
        "x",
        "landed at the link's target inside the sandbox"
    );
    d.write_file(&id, "/root/up/at-root", b"y".to_vec(), 0o644)
        .await
        .expect("climbing link");
    assert_eq!(sh(d, &id, "cat /at-root").await, "y");
    let passwd = d
        .read_file(&id, "/root/pw", LIMIT)
        .await
        .expect("read via absolute link");
    assert_eq!(
        passwd, b"root:x:0:0:root:/root:/bin/sh\n",
        "the sandbox's /etc/passwd, not the host's"
    );

    // Only regular files, within the limit.
    sh(d, &id, "mknod /root/null c 1 3 && mkfifo /root/fifo").await;
    for p in ["/root/null", "/root/fifo", "/root"] {
        assert!(
            matches!(
                refused(d.read_file(&id, p, LIMIT).await),
                FileError::NotAFile(_)
            ),
            "{p}"
        );
    }
    assert!(matches!(
        refused(d.write_file(&id, "/root/null", b"x".to_vec(), 0o644).await),
        FileError::NotAFile(_)
    ));
    assert!(matches!(
        refused(d.read_file(&id, "/nope", LIMIT).await),
        FileError::NotFound(_)
    ));
    assert!(matches!(
        refused(d.read_file(&id, "/bin/busybox", 10).await),
        FileError::TooLarge { .. }
    ));

    fx.driver.delete(&id).await.expect("delete");
    assert!(matches!(
        fx.driver.read_file(&id, "/root/in.txt", LIMIT).await,
        Err(SandboxError::NotFound { .. })
    ));
}
