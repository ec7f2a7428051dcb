//! Pulls from a real registry: caching, digests, missing images, unsafe layers, whiteouts.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use sandbox::oci::{ImageRef, ImageStore, PullError, UnpackError};
use serde_json::json;

use crate::support::{self, entries, Registry, TarBuilder};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ImageStore::open(dir.path().join("images")).expect("open store");
    (dir, store)
}

fn reference(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("valid reference")
}

/// The cache holds nothing: no layer, no record, no temp file.
fn assert_empty_cache(store: &ImageStore) {
    for d in ["layers", "images", "tmp"] {
        assert_eq!(
            entries(&store.root().join(d)),
            Vec::<String>::new(),
            "{d}/ should be empty"
        );
    }
}

#[tokio::test]
async fn pull_unpacks_once_and_records_the_config() {
    let reg = Registry::start().await;
    let (manifest, layers) = reg.push_busybox("test/busybox", "1").await;
    let (_dir, store) = store();
    let image = reference(&reg.image("test/busybox:1"));

    let first = store.pull(&image).await.expect("first pull");
    assert_eq!(first.image.digest, manifest);
    assert_eq!(first.unpacked, layers);
    assert_eq!(first.downloaded.len(), 2, "config and one layer");
    let cfg = &first.image.config;
    assert_eq!(cfg.cmd, ["sh"]);
    assert!(cfg.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(cfg.working_dir.as_deref(), Some("/root"));
    let layer = store.layer_dir(&layers[0]);
    assert!(layer.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh"))
            .expect("sh link")
            .to_str(),
        Some("busybox")
    );
    let tmp_mode = std::fs::metadata(layer.join("tmp")).expect("tmp").mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777);
    let inode = std::fs::metadata(&layer).expect("layer").ino();

    // Again, through a new store on the same cache (a restarted runner): nothing fetched.
    let store2 = ImageStore::open(store.root()).expect("reopen");
    let second = store2.pull(&image).await.expect("second pull");
    assert!(
        second.downloaded.is_empty() && second.unpacked.is_empty(),
        "{second:?}"
    );
    assert_eq!(second.image.layers, first.image.layers);
    assert_eq!(
        std::fs::metadata(&layer).expect("layer").ino(),
        inode,
        "layer not unpacked again"
    );

    // By digest: served from the cache without asking the registry at all.
    drop(reg);
    let by_digest = reference(&format!("{}/test/busybox@{manifest}", image.registry));
    let third = store2
        .pull(&by_digest)
        .await
        .expect("pull by digest, registry gone");
    assert!(third.downloaded.is_empty());
}

#[tokio::test]
async fn missing_image_or_tag_is_a_typed_error_naming_it() {
    let reg = Registry::start().await;
    reg.push_busybox("test/busybox", "1").await;
    let (_dir, store) = store();
    for missing in ["test/nothing:1", "test/busybox:2"] {
        let name = reg.image(missing);
        match store.pull(&reference(&name)).await {
            Err(PullError::NotFound { image }) => assert_eq!(image, name),
            other => panic!("{missing}: expected NotFound, got {other:?}"),
        }
        let err = store.pull(&reference(&name)).await.expect_err("missing");
        assert!(err.to_string().contains(&name), "{err}");
    }
    assert_empty_cache(&store);
}

#[tokio::test]
async fn a_corrupted_blob_is_refused_and_leaves_nothing() {
    let reg = Registry::start().await;
    let (_, layers) = reg.push_busybox("test/busybox", "1").await;
    let blob = reg.blob_file(&layers[0]);
    let mut bytes = std::fs::read(&blob).expect("blob on the registry's disk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).expect("corrupt blob");

    let (_dir, store) = store();
    match store.pull(&reference(&reg.image("test/busybox:1"))).await {
        Err(PullError::DigestMismatch { expected, .. }) => assert_eq!(expected, layers[0]),
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_empty_cache(&store);
}

async fn pull_layer(
    reg: &Registry,
    repo: &str,
    layer: Vec<u8>,
) -> (
    ImageStore,
    tempfile::TempDir,
    Result<sandbox::Pulled, PullError>,
) {
    reg.push_image(repo, "1", &[layer], json!({})).await;
    let (dir, store) = store();
    let result = store
        .pull(&reference(&reg.image(&format!("{repo}:1"))))
        .await;
    (store, dir, result)
}

#[tokio::test]
async fn layers_leaving_the_root_are_refused() {
    let reg = Registry::start().await;
    let outside = tempfile::tempdir().expect("outside dir");
    let outside_path = outside
        .path()
        .to_str()
        .expect("utf-8 temp path")
        .to_string();

    let dotdot = TarBuilder::default()
        .dir("etc", 0o755)
        .file("../../evil", 0o644, b"x")
        .finish();
    let absolute = TarBuilder::default()
        .file("/tmp/evil-absolute", 0o644, b"x")
        .finish();
    let through_symlink = TarBuilder::default()
        .symlink("escape", &outside_path)
        .file("escape/pwned", 0o644, b"x")
        .finish();
    let hardlink = TarBuilder::default()
        .hardlink("passwd", "../../../etc/passwd")
        .finish();

    let cases: [(&str, Vec<u8>); 4] = [
        ("test/dotdot", dotdot),
        ("test/absolute", absolute),
        ("test/symlink", through_symlink),
        ("test/hardlink", hardlink),
    ];
    for (repo, layer) in cases {
        let (store, _dir, result) = pull_layer(&reg, repo, layer).await;
        let source = match result {
            Err(PullError::Unpack { source, .. }) => source,
            other => panic!("{repo}: expected an unpack error, got {other:?}"),
        };
        let expected = match repo {
            "test/symlink" => matches!(source, UnpackError::ThroughSymlink { .. }),
            "test/hardlink" => matches!(source, UnpackError::LinkEscape { .. }),
            _ => matches!(source, UnpackError::Escape { .. }),
        };
        assert!(expected, "{repo}: {source:?}");
        assert_empty_cache(&store);
    }
    assert_eq!(
        entries(outside.path()),
        Vec::<String>::new(),
        "nothing written outside"
    );
    assert!(!std::path::Path::new("/tmp/evil-absolute").exists());
}

#[tokio::test]
async fn whiteouts_become_overlayfs_whiteouts() {
    if support::skip_unless_root("whiteouts_become_overlayfs_whiteouts") {
        return;
    }
    let reg = Registry::start().await;
    let lower = TarBuilder::default()
        .dir("a", 0o755)
        .file("a/gone", 0o644, b"x")
        .dir("d", 0o755)
        .file("d/old", 0o644, b"x")
        .finish();
    let upper = TarBuilder::default()
        .file("a/.wh.gone", 0o644, b"")
        .file("d/.wh..wh..opq", 0o644, b"")
        .file("d/new", 0o644, b"y")
        .finish();
    let (_, layers) = reg
        .push_image("test/whiteouts", "1", &[lower, upper], json!({}))
        .await;
    let (_dir, store) = store();
    store
        .pull(&reference(&reg.image("test/whiteouts:1")))
        .await
        .expect("pull");
    let top = store.layer_dir(&layers[1]);
    let gone = std::fs::symlink_metadata(top.join("a/gone")).expect("whiteout node");
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "a 0/0 character device"
    );
    assert!(!top.join("a/.wh.gone").exists() && !top.join("d/.wh..wh..opq").exists());
    let opaque = xattr::get(top.join("d"), "trusted.overlay.opaque").expect("read xattr");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]), "opaque xattr set");
    assert!(top.join("d/new").is_file());
}

#[tokio::test]
async fn an_index_resolves_to_linux_amd64() {
    let reg = Registry::start().await;
    let repo = "test/multi";
    let (arm, _) = reg
        .image_manifest(
            repo,
            &[TarBuilder::default().file("arm", 0o644, b"").finish()],
            "arm64",
            json!({}),
        )
        .await;
    let (amd, _) = reg
        .image_manifest(
            repo,
            &[support::busybox_layer()],
            "amd64",
            support::busybox_config(),
        )
        .await;
    let arm_digest = reg
        .push_manifest(repo, "arm", support::OCI_MANIFEST, &arm)
        .await;
    let amd_digest = reg
        .push_manifest(repo, "amd", support::OCI_MANIFEST, &amd)
        .await;
    let size = |v: &serde_json::Value| serde_json::to_vec(v).expect("json").len();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": support::OCI_INDEX,
        "manifests": [
            { "mediaType": support::OCI_MANIFEST, "digest": arm_digest.to_string(), "size": size(&arm), "platform": { "architecture": "arm64", "os": "linux" } },
            { "mediaType": support::OCI_MANIFEST, "digest": amd_digest.to_string(), "size": size(&amd), "platform": { "architecture": "amd64", "os": "linux" } },
        ],
    });
    let index_digest = reg
        .push_manifest(repo, "1", support::OCI_INDEX, &index)
        .await;
    let (_dir, store) = store();
    let pulled = store
        .pull(&reference(&reg.image("test/multi:1")))
        .await
        .expect("pull index");
    assert_eq!(pulled.image.digest, index_digest);
    assert_eq!(pulled.image.manifest_digest, amd_digest);
    assert_eq!(pulled.image.config.cmd, ["sh"]);
}
