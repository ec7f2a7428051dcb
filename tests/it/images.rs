//! The sandbox images: built from Debian's packages by scripts/build-images.sh (run by
//! install-deps), in a fresh registry from its seeded storage or pushed by the default stack's
//! `images` task, checked over the OCI distribution API, and there again when the registry is
//! rebuilt.

use crate::harness::{free_port, Project};

/// The manifest digest the registry serves for `name:tag`, as `sha256:...`.
fn registry_digest(port: u16, name: &str, tag: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-fsSI", "--max-time", "5", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json")
        .arg(format!("http://127.0.0.1:{port}/v2/{name}/manifests/{tag}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("docker-content-digest:")
            .map(|d| d.trim().to_string())
    })
}

/// Where install-deps put the images.
fn tools_dir() -> String {
    std::env::var("STACK_TOOLS_DIR").unwrap_or_else(|_| "/opt/stack-tools".into())
}

/// The digest of the layout's one image, from its index.json.
fn layout_digest(name: &str) -> String {
    let dir = tools_dir();
    let index = std::fs::read_to_string(format!("{dir}/images/{name}/index.json"))
        .unwrap_or_else(|e| panic!("{dir}/images/{name}: {e}: run scripts/build-images.sh"));
    let v: serde_json::Value = serde_json::from_str(&index).expect("index.json");
    v["manifests"][0]["digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}

/// Each image is in the registry at `port`, with its layout's digest.
fn assert_images_in(port: u16) {
    for (name, tag) in [("base", "bookworm"), ("busybox", "latest")] {
        assert_eq!(
            registry_digest(port, &format!("boxlite/{name}"), tag),
            Some(layout_digest(name)),
            "boxlite/{name}:{tag} is in the registry, byte for byte"
        );
    }
}

/// A project with the default registry and images task on a free port.
fn images_project(name: &str) -> (Project, u16) {
    let port = free_port();
    let p = Project::new(name);
    p.default_service("registry", 25000, port)
        .default_service_ports("images", &[]);
    (p, port)
}

#[test]
fn a_fresh_registry_starts_from_the_seeded_storage_and_the_task_pushes_nothing() {
    let seed = std::path::Path::new(&tools_dir()).join("images/registry-seed/docker");
    assert!(
        seed.is_dir(),
        "{}: run scripts/build-images.sh",
        seed.display()
    );
    let (p, port) = images_project("images-seeded");
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let log = std::fs::read_to_string(p.state_dir().join("logs/images.log")).expect("log");
    assert!(log.contains("images: 0 pushed"), "{log}");
    assert_images_in(port);
    // A copy owned by the stack, not links into the tools dir: deleting it leaves the seed.
    let blobs = p
        .state_dir()
        .join("data/registry/storage/docker/registry/v2/blobs");
    let layer = walk_files(&blobs)
        .into_iter()
        .max_by_key(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        layer.metadata().expect("stat").nlink(),
        1,
        "{}",
        layer.display()
    );

    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr
            .contains("2 services up (0 started, 2 already running)"),
        "a warm up pushes nothing: {}",
        r.stderr
    );
    // A fresh registry is seeded again: rebuilding it runs its dependents again.
    let r = p.run(&["rebuild-box", "registry"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_images_in(port);
    assert_eq!(p.run(&["down"]).code, 0);
}

#[test]
fn without_a_seed_the_images_task_pushes_each_image_once_and_again_after_a_rebuild() {
    // A tools dir with the images but no registry seed (as one built by an older install).
    let scratch = tempfile::Builder::new()
        .prefix("images-tools")
        .tempdir()
        .expect("scratch dir");
    let tools = scratch.path();
    std::fs::create_dir_all(tools.join("images")).expect("mkdir");
    for name in ["base", "busybox"] {
        std::os::unix::fs::symlink(
            std::path::Path::new(&tools_dir()).join("images").join(name),
            tools.join("images").join(name),
        )
        .expect("symlink");
    }
    let (p, port) = images_project("images-pushed");
    let run = |args: &[&str]| -> crate::harness::Run {
        p.cmd(args)
            .env("STACK_TOOLS_DIR", tools)
            .output()
            .expect("run stack")
            .into()
    };
    let r = run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let log = std::fs::read_to_string(p.state_dir().join("logs/images.log")).expect("log");
    assert!(log.contains("images: 2 pushed"), "{log}");
    assert_images_in(port);

    let r = run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr
            .contains("2 services up (0 started, 2 already running)"),
        "a warm up pushes nothing: {}",
        r.stderr
    );

    // A fresh registry has no images: rebuilding it runs its dependents again.
    let r = run(&["rebuild-box", "registry"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let log = std::fs::read_to_string(p.state_dir().join("logs/images.log")).expect("log");
    assert_eq!(log.matches("images: 2 pushed").count(), 2, "{log}");
    assert_images_in(port);
    assert_eq!(run(&["down"]).code, 0);
}

/// Every regular file under `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
