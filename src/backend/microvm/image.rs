//! The boot probe's image: a one-layer OCI image layout holding a static busybox, built by
//! `stack` itself from Debian's `busybox-static` so the probe needs no registry. The layer is
//! deterministic (sorted, uid 0, mtime 0), so the same busybox always gives the same digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where Debian's `busybox-static` installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The applets linked in the image: what the probe and an interactive look around need.
const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "sleep", "cat", "ls", "ps", "mount", "uname", "env", "id",
];

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    // Paths here are short, fixed ASCII names: set_path cannot fail on them.
    let _ = h.set_path(path);
    h
}

/// The uncompressed layer: `bin/busybox`, its applet links, `/etc/passwd` and the mount points.
fn layer_tar(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = vec!["bin", "dev", "etc", "proc", "root", "run", "sys", "tmp"];
    dirs.sort_unstable();
    for d in &dirs {
        let mut h = header(d, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    let mut h = header(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        busybox.len() as u64,
    );
    h.set_cksum();
    b.append(&h, busybox)?;
    let mut applets = APPLETS.to_vec();
    applets.sort_unstable();
    for a in applets {
        let mut h = header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    for (name, text) in [
        ("etc/group", "root:x:0:\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ] {
        let mut h = header(name, tar::EntryType::Regular, 0o644, text.len() as u64);
        h.set_cksum();
        b.append(&h, text.as_bytes())?;
    }
    b.into_inner()
}

fn write_blob(dir: &Path, data: &[u8]) -> std::io::Result<String> {
    let digest = sha256_hex(data);
    let path = dir.join("blobs/sha256").join(&digest);
    if !path.exists() {
        std::fs::write(&path, data)?;
    }
    Ok(digest)
}

/// Why the probe image cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The busybox binary cannot be read.
    #[error("cannot read {}: {source} (install Debian's busybox-static)", path.display())]
    Busybox {
        /// Where it should be.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layout cannot be written.
    #[error("cannot build the probe image in {}: {source}", dir.display())]
    Write {
        /// The layout's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Builds the probe image's OCI layout in `out` (idempotent: an existing complete layout made
/// from the same busybox is kept) and returns `out`. The image's command is `sleep 3600`.
pub fn build(out: &Path, busybox: &Path) -> Result<PathBuf, ImageError> {
    let bin = std::fs::read(busybox).map_err(|source| ImageError::Busybox {
        path: busybox.to_path_buf(),
        source,
    })?;
    let io = |source: std::io::Error| ImageError::Write {
        dir: out.to_path_buf(),
        source,
    };
    let raw = layer_tar(&bin).map_err(io)?;
    let diff_id = sha256_hex(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).map_err(io)?;
    let layer = gz.finish().map_err(io)?;

    std::fs::create_dir_all(out.join("blobs/sha256")).map_err(io)?;
    let layer_digest = write_blob(out, &layer).map_err(io)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    })
    .to_string();
    let config_digest = write_blob(out, config.as_bytes()).map_err(io)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": format!("sha256:{layer_digest}"), "size": layer.len() }],
    })
    .to_string();
    let manifest_digest = write_blob(out, manifest.as_bytes()).map_err(io)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    })
    .to_string();
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    std::fs::write(out.join("index.json"), index).map_err(io)?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn blob(dir: &Path, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::read(dir.join("blobs/sha256").join(hex)).expect("blob present")
    }

    /// The layout is valid OCI: every digest names a blob with that sha256 and size, the
    /// config's diff_id is the uncompressed layer's, and the layer holds a runnable busybox.
    #[test]
    fn the_probe_image_is_a_valid_deterministic_oci_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Any executable stands in for busybox when the package is absent; the format is what
        // this test checks.
        let fake = tmp.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF not really busybox").expect("write");
        let a = build(&tmp.path().join("a"), &fake).expect("build a");
        let b = build(&tmp.path().join("b"), &fake).expect("build b");
        let index_a = std::fs::read_to_string(a.join("index.json")).expect("index");
        assert_eq!(
            index_a,
            std::fs::read_to_string(b.join("index.json")).expect("index b"),
            "the same input gives the same image"
        );
        assert!(a.join("oci-layout").is_file());
        let index: serde_json::Value = serde_json::from_str(&index_a).expect("json");
        let m = &index["manifests"][0];
        let man_bytes = blob(&a, m["digest"].as_str().expect("digest"));
        assert_eq!(man_bytes.len() as u64, m["size"].as_u64().expect("size"));
        let man: serde_json::Value = serde_json::from_slice(&man_bytes).expect("manifest");
        assert_eq!(man["mediaType"], MANIFEST_TYPE);
        let cfg_bytes = blob(&a, man["config"]["digest"].as_str().expect("cfg"));
        let cfg: serde_json::Value = serde_json::from_slice(&cfg_bytes).expect("config");
        let layer = blob(&a, man["layers"][0]["digest"].as_str().expect("layer"));
        assert_eq!(
            layer.len() as u64,
            man["layers"][0]["size"].as_u64().expect("size")
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&layer[..])
            .read_to_end(&mut raw)
            .expect("gunzip");
        assert_eq!(
            cfg["rootfs"]["diff_ids"][0].as_str().expect("diff id"),
            format!("sha256:{}", sha256_hex(&raw))
        );
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(&raw[..]);
        for e in archive.entries().expect("entries") {
            let e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            if path == "bin/busybox" {
                assert_eq!(e.header().mode().expect("mode") & 0o111, 0o111);
            }
            if path == "bin/sleep" {
                assert_eq!(
                    e.link_name()
                        .expect("link")
                        .expect("target")
                        .to_string_lossy(),
                    "busybox"
                );
            }
            assert_eq!(e.header().mtime().expect("mtime"), 0);
            names.push(path);
        }
        for want in [
            "bin/busybox",
            "bin/sh",
            "bin/sleep",
            "etc/passwd",
            "proc",
            "dev",
        ] {
            assert!(
                names.iter().any(|n| n.trim_end_matches('/') == want),
                "{want} in {names:?}"
            );
        }
        assert_eq!(cfg["config"]["Cmd"][0], "/bin/sleep");
    }
}
