//! The sandbox images: built from Debian's packages by scripts/build-images.sh (run by
//! install-deps), pushed by the default stack's `images` task into its own registry, checked
//! over the OCI distribution API, and pushed again when the registry is rebuilt.

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

/// The digest of the layout's one image, from its index.json.
fn layout_digest(name: &str) -> String {
    let dir = std::env::var("STACK_TOOLS_DIR").unwrap_or_else(|_| "/opt/stack-tools".into());
    let index = std::fs::read_to_string(format!("{dir}/images/{name}/index.json"))
        .unwrap_or_else(|e| panic!("{dir}/images/{name}: {e}: run scripts/build-images.sh"));
    let v: serde_json::Value = serde_json::from_str(&index).expect("index.json");
    v["manifests"][0]["digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}

#[test]
fn the_images_task_pushes_each_image_once_and_again_after_the_registry_is_rebuilt() {
    let port = free_port();
    let p = Project::new("images");
    p.default_service("registry", 25000, port)
        .default_service_ports("images", &[]);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let log = std::fs::read_to_string(p.state_dir().join("logs/images.log")).expect("log");
    assert!(log.contains("images: 2 pushed"), "{log}");
    for (name, tag) in [("base", "bookworm"), ("busybox", "latest")] {
        assert_eq!(
            registry_digest(port, &format!("boxlite/{name}"), tag),
            Some(layout_digest(name)),
            "boxlite/{name}:{tag} is in the registry, byte for byte"
        );
    }

    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr
            .contains("2 services up (0 started, 2 already running)"),
        "a warm up pushes nothing: {}",
        r.stderr
    );

    // A fresh registry has no images: rebuilding it runs its dependents again.
    let r = p.run(&["rebuild-box", "registry"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(
        registry_digest(port, "boxlite/busybox", "latest"),
        Some(layout_digest("busybox"))
    );
}
