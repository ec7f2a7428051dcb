//! Test support: a real `docker-registry` on a free loopback port in a temp dir, and a small
//! pusher that builds busybox images (and deliberately broken ones) and pushes them through the
//! distribution API.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandbox::Digest;
use serde_json::json;

/// Is this process root? Tests that mount, mknod or run runc skip otherwise, saying why.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub use testbed::{skip_unless_root, wait_for};

/// A `docker-registry` serving from a temp dir; killed and reaped on drop.
pub struct Registry {
    inner: testbed::Registry,
    pub host: String,
    http: reqwest::Client,
}

impl Registry {
    /// Starts the registry as `services/registry.yaml` does, on a free port, and waits for `/v2/`.
    pub async fn start() -> Registry {
        let inner = testbed::Registry::start().await;
        Registry {
            host: inner.host().to_string(),
            inner,
            http: reqwest::Client::new(),
        }
    }

    /// `host:port/repository:tag` for this registry.
    pub fn image(&self, repository_tag: &str) -> String {
        format!("{}/{repository_tag}", self.host)
    }

    /// The URL of `path` on this registry.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    /// Uploads a blob (monolithic POST + PUT) and returns its digest.
    pub async fn push_blob(&self, repository: &str, bytes: Vec<u8>) -> Digest {
        let digest = Digest::of(&bytes);
        let start = self
            .http
            .post(self.url(&format!("/v2/{repository}/blobs/uploads/")))
            .send()
            .await
            .expect("start upload");
        assert_eq!(start.status().as_u16(), 202, "start upload");
        let location = start.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.host)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .http
            .put(format!("{location}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("finish upload");
        assert_eq!(put.status().as_u16(), 201, "finish upload of {digest}");
        digest
    }

    /// Puts a manifest (or index) under `reference` and returns its digest.
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        doc: &serde_json::Value,
    ) -> Digest {
        let bytes = serde_json::to_vec(doc).expect("manifest json");
        let digest = Digest::of(&bytes);
        let put = self
            .http
            .put(self.url(&format!("/v2/{repository}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(bytes)
            .send()
            .await
            .expect("put manifest");
        assert_eq!(
            put.status().as_u16(),
            201,
            "put manifest {repository}:{reference}"
        );
        digest
    }

    /// Pushes an image of `layers` (uncompressed tars, gzipped here) as `repository:tag`;
    /// returns the manifest's digest and the layer blobs' digests.
    pub async fn push_image(
        &self,
        repository: &str,
        tag: &str,
        layers: &[Vec<u8>],
        config: serde_json::Value,
    ) -> (Digest, Vec<Digest>) {
        let (manifest, layer_digests) = self
            .image_manifest(repository, layers, "amd64", config)
            .await;
        let digest = self
            .push_manifest(repository, tag, OCI_MANIFEST, &manifest)
            .await;
        (digest, layer_digests)
    }

    /// Pushes the config and layers of an image and returns its (unpushed) manifest.
    pub async fn image_manifest(
        &self,
        repository: &str,
        layers: &[Vec<u8>],
        architecture: &str,
        config: serde_json::Value,
    ) -> (serde_json::Value, Vec<Digest>) {
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let config_blob = json!({
            "architecture": architecture,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config_bytes = serde_json::to_vec(&config_blob).expect("config json");
        let config_size = config_bytes.len();
        let config_digest = self.push_blob(repository, config_bytes).await;
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for layer in layers {
            let gz = gzip(layer);
            let size = gz.len();
            let d = self.push_blob(repository, gz).await;
            descs.push(json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": size }));
            digests.push(d);
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_size },
            "layers": descs,
        });
        (manifest, digests)
    }

    /// Pushes the one-layer busybox image as `repository:tag`.
    pub async fn push_busybox(&self, repository: &str, tag: &str) -> (Digest, Vec<Digest>) {
        self.push_image(repository, tag, &[busybox_layer()], busybox_config())
            .await
    }

    /// The file a blob is stored in on the registry's disk.
    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.inner
            .dir()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The busybox image's config: a shell, PATH, a working dir.
pub fn busybox_config() -> serde_json::Value {
    json!({
        "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
        "Cmd": ["sh"],
        "WorkingDir": "/root",
    })
}

/// Applets the busybox image links to `/bin/busybox`.
const APPLETS: &[&str] = &[
    "sh", "httpd", "hostname", "uname", "sleep", "cat", "echo", "true", "false", "ls", "id", "env",
    "pwd", "ps", "mkdir", "rm", "head", "ln", "wc", "readlink",
];

/// A one-layer busybox root filesystem from the host's static `/bin/busybox` (Debian's
/// `busybox-static`), as an uncompressed tar.
pub fn busybox_layer() -> Vec<u8> {
    let busybox =
        std::fs::read("/bin/busybox").expect("/bin/busybox (Debian package busybox-static)");
    let mut t = TarBuilder::default();
    for d in ["bin", "etc", "root", "www", "proc", "sys", "dev"] {
        t.dir(d, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.file("bin/busybox", 0o755, &busybox);
    for a in APPLETS {
        t.symlink(&format!("bin/{a}"), "busybox");
    }
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    );
    t.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    t.finish()
}

/// Builds tars entry by entry, including entries the `tar` crate refuses to write (names with
/// `..` or absolute paths), by writing the name bytes into the header directly.
#[derive(Default)]
pub struct TarBuilder {
    out: Vec<u8>,
}

impl TarBuilder {
    fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_ustar();
        {
            let raw = h.as_old_mut();
            assert!(name.len() < 100, "short names only");
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, mode, None, &[]);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, mode, None, data);
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, Some(target), &[]);
        self
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, 0o644, Some(target), &[]);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// Every entry under `dir`, relative, sorted: to show that a failure left nothing behind.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

/// A driver on a temp home whose cache holds the busybox image, and the registry it came from.
pub struct Fixture {
    pub registry: Registry,
    pub home: tempfile::TempDir,
    pub driver: sandbox::Driver,
    pub image: sandbox::Image,
}

impl Drop for Fixture {
    /// A failed test still removes its sandboxes (containers, then overlay mounts) before the
    /// temp home is removed, so nothing runs on and no removal walks into a mounted overlay.
    fn drop(&mut self) {
        let runc_root = self.home.path().join("runc");
        let listed = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output();
        let ids = listed
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", id])
                .status();
        }
        let home = self.home.path().display().to_string();
        testbed::outside::kill_slirps(&home);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for target in mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&home))
        {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The cgroup all test sandboxes go under (one `<parent>/<id>` each).
pub const CGROUP_PARENT: &str = "stack-sandbox-tests";

pub fn driver_config() -> sandbox::DriverConfig {
    sandbox::DriverConfig {
        cgroup_parent: CGROUP_PARENT.into(),
        ..Default::default()
    }
}

impl Fixture {
    /// The busybox fixture for a test that needs root; `None` (saying why) when not root.
    pub async fn for_root(test: &str) -> Option<Fixture> {
        if skip_unless_root(test) {
            return None;
        }
        Some(Self::busybox().await)
    }

    /// Creates and starts a sandbox with the default options.
    pub async fn sandbox(&self, prefix: &str) -> sandbox::SandboxId {
        let id = unique_id(prefix);
        let options = sandbox::CreateOptions::default();
        self.driver
            .create(&id, &self.image, &options)
            .await
            .expect("create");
        id
    }

    pub async fn busybox() -> Fixture {
        Self::busybox_with(driver_config()).await
    }

    /// The busybox fixture with a driver opened with `config`.
    pub async fn busybox_with(config: sandbox::DriverConfig) -> Fixture {
        let registry = Registry::start().await;
        registry.push_busybox("test/busybox", "1").await;
        let home = tempfile::tempdir().expect("runner home");
        let driver =
            sandbox::Driver::open(sandbox::Home::new(home.path()), config).expect("driver");
        let reference =
            sandbox::ImageRef::parse(&registry.image("test/busybox:1")).expect("reference");
        let image = driver
            .images()
            .pull(&reference)
            .await
            .expect("pull busybox")
            .image;
        Fixture {
            registry,
            home,
            driver,
            image,
        }
    }
}

/// A sandbox id unique to this test process and call (cgroups are shared by concurrent tests).
pub fn unique_id(prefix: &str) -> sandbox::SandboxId {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    sandbox::SandboxId::parse(&format!("{prefix}-{}-{n}", std::process::id())).expect("valid id")
}

/// Asserts that sandbox `id` left nothing behind: no mount under its dir, no runc state, no dir,
/// no cgroup, no live init process.
pub fn assert_no_trace(home: &Path, id: &sandbox::SandboxId, pid: u32) {
    let dir = home.join("sandboxes").join(id.as_str());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(dir.to_str().expect("utf-8")),
        "a mount is left under {}",
        dir.display()
    );
    assert!(
        !home.join("runc").join(id.as_str()).exists(),
        "runc state left"
    );
    assert!(!dir.exists(), "sandbox dir left");
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(CGROUP_PARENT)
            .join(id.as_str())
            .exists(),
        "cgroup left"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("gone");
    assert!(
        state == "gone" || state == "Z",
        "init pid {pid} still alive ({state})"
    );
}

/// Exec options with a generous timeout: the commands are quick, the machine may be busy.
pub fn exec_opts() -> sandbox::ExecOptions {
    sandbox::ExecOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

/// Runs `command` in the sandbox: its exit code, stdout and stderr.
pub async fn sh(
    driver: &sandbox::Driver,
    id: &sandbox::SandboxId,
    command: &str,
) -> (i32, String, String) {
    let out = driver.exec(id, command, &exec_opts()).await.expect("exec");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.exit_code, text(&out.stdout), text(&out.stderr))
}

/// Runs `command` in the sandbox, expecting success; returns its stdout.
pub async fn sh_ok(driver: &sandbox::Driver, id: &sandbox::SandboxId, command: &str) -> String {
    let (code, out, err) = sh(driver, id, command).await;
    assert_eq!(code, 0, "{command}: {err}");
    out
}
