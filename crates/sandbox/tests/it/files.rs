//! Files in a running sandbox through the host: round trips, and paths that try to leave it.

use sandbox::{FileError, SandboxError};

use crate::support::{sh_ok, Fixture};

const LIMIT: u64 = 1 << 20;

/// Which file error `result` failed with.
fn refusal(result: Result<impl std::fmt::Debug, SandboxError>) -> &'static str {
    match result {
        Err(SandboxError::File(_, source)) => match source {
            FileError::NotAbsolute(_) => "not absolute",
            FileError::Escape(_) => "escape",
            FileError::NotFound(_) => "not found",
            FileError::NotAFile(_) => "not a file",
            FileError::TooLarge { .. } => "too large",
            FileError::Io { .. } => "io",
        },
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[tokio::test]
async fn files_stay_inside_the_sandbox() {
    let Some(fx) = Fixture::for_root("files_stay_inside_the_sandbox").await else {
        return;
    };
    let id = fx.sandbox("files").await;
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
        sh_ok(d, &id, "cat /srv/app/hello.txt").await,
        "from the host\n"
    );
    sh_ok(d, &id, "echo from inside > /root/in.txt").await;
    assert_eq!(
        d.read_file(&id, "/root/in.txt", LIMIT).await.expect("read"),
        b"from inside\n"
    );
    d.write_file(&id, "/root/in.txt", b"replaced".to_vec(), 0o644)
        .await
        .expect("overwrite");
    assert_eq!(sh_ok(d, &id, "cat /root/in.txt").await, "replaced");

    // `..` and relative paths are refused before anything is opened.
    let refusals = [
        refusal(d.read_file(&id, "/root/../../etc/passwd", LIMIT).await),
        refusal(d.write_file(&id, "/../x", b"x".to_vec(), 0o644).await),
        refusal(d.read_file(&id, "etc/passwd", LIMIT).await),
    ];
    assert_eq!(refusals, ["escape", "escape", "not absolute"]);

    // Symlinks are resolved inside the root: absolute ones, and relative ones that climb.
    let host = tempfile::tempdir().expect("host dir");
    std::fs::write(host.path().join("secret"), "host secret").expect("host file");
    let host_dir = host.path().display().to_string();
    let link = |target: String, name: &str| format!("ln -s {target} /root/{name}");
    sh_ok(d, &id, &link(host_dir.clone(), "to-host")).await;
    sh_ok(
        d,
        &id,
        "ln -s ../../../../../../ /root/up && ln -s /etc/passwd /root/pw",
    )
    .await;
    let through_links = [
        refusal(d.read_file(&id, "/root/to-host/secret", LIMIT).await),
        // The link's target does not exist in the sandbox.
        refusal(
            d.write_file(&id, "/root/to-host/planted", b"x".to_vec(), 0o644)
                .await,
        ),
    ];
    assert_eq!(through_links, ["not found", "not found"]);
    sh_ok(d, &id, &format!("mkdir -p {host_dir}")).await;
    d.write_file(&id, "/root/to-host/planted", b"x".to_vec(), 0o644)
        .await
        .expect("write through link");
    assert!(!host.path().join("planted").exists(), "written on the host");
    assert_eq!(
        sh_ok(d, &id, &format!("cat {host_dir}/planted")).await,
        "x",
        "landed at the link's target inside the sandbox"
    );
    d.write_file(&id, "/root/up/at-root", b"y".to_vec(), 0o644)
        .await
        .expect("climbing link");
    assert_eq!(sh_ok(d, &id, "cat /at-root").await, "y");
    let passwd = d
        .read_file(&id, "/root/pw", LIMIT)
        .await
        .expect("read via absolute link");
    assert_eq!(
        passwd, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        "the sandbox's /etc/passwd, not the host's"
    );

    // Only regular files, within the limit.
    sh_ok(d, &id, "mknod /root/null c 1 3 && mkfifo /root/fifo").await;
    let not_files = [
        refusal(d.read_file(&id, "/root/null", LIMIT).await),
        refusal(d.read_file(&id, "/root/fifo", LIMIT).await),
        refusal(d.read_file(&id, "/root", LIMIT).await),
        refusal(d.write_file(&id, "/root/null", b"x".to_vec(), 0o644).await),
    ];
    assert_eq!(not_files, ["not a file"; 4]);
    let read = |path, limit| d.read_file(&id, path, limit);
    assert_eq!(refusal(read("/nope", LIMIT).await), "not found");
    assert_eq!(refusal(read("/bin/busybox", 10).await), "too large");

    fx.driver.delete(&id).await.expect("delete");
    assert!(matches!(
        fx.driver.read_file(&id, "/root/in.txt", LIMIT).await,
        Err(SandboxError::NotFound { .. })
    ));
}
