//! The archive of a sandbox's disk: a round trip keeps every file, link, mode and whiteout; each
//! kind of damage or hostile member is refused, naming the member, and installs nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use boxarchive::{install, verify, write, ArchiveError, BoxInfo, FORMAT_VERSION, MANIFEST};

fn info() -> BoxInfo {
    BoxInfo {
        box_id: "sbx-1234".into(),
        name: Some("demo".into()),
        image: "boxlite/busybox:latest".into(),
        image_digest: format!("sha256:{}", "ab".repeat(32)),
        options: serde_json::json!({"resources": {"cpu": 1.0, "memoryMib": 512}}),
        exported_at: "2026-12-01T00:00:00Z".into(),
    }
}

/// A writable layer as overlayfs leaves one: files, a read-only dir, an executable, links (one
/// absolute: resolved inside the box), an empty file, and a whiteout.
fn disk(root: &Path) {
    fs::create_dir_all(root.join("srv/www")).unwrap();
    fs::write(root.join("srv/www/index.html"), "hello\n").unwrap();
    fs::write(root.join("srv/empty"), "").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("srv/big.bin"), &big).unwrap();
    fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    fs::write(root.join("usr/local/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        root.join("usr/local/bin/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/srv/www/index.html", root.join("srv/absolute")).unwrap();
    std::os::unix::fs::symlink("www/index.html", root.join("srv/relative")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    nix::sys::stat::mknod(
        &root.join("etc/motd"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("a whiteout (char 0:0)");
    fs::create_dir_all(root.join("readonly")).unwrap();
    fs::write(root.join("readonly/kept"), "kept\n").unwrap();
    fs::set_permissions(root.join("readonly"), fs::Permissions::from_mode(0o555)).unwrap();
}

fn archive_of(root: &Path) -> Vec<u8> {
    write(root, info(), Vec::new()).expect("write").1
}

/// Every path under `root` with what it is: kind, mode, content or target.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&path).unwrap();
            let mode = m.mode() & 0o7777;
            let ft = m.file_type();
            if ft.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                walk(root, &path, out);
            } else if ft.is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    fs::read_link(&path).unwrap().display()
                ));
            } else if ft.is_char_device() {
                out.push(format!("{rel} char {} {mode:o}", m.rdev()));
            } else {
                let bytes = fs::read(&path).unwrap();
                let sum: u64 = bytes.iter().map(|b| u64::from(*b)).sum();
                out.push(format!("{rel} file {mode:o} {} {sum}", bytes.len()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn a_disk_round_trips_with_its_files_links_modes_and_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("upper");
    disk(&src);
    let bytes = archive_of(&src);
    let manifest = verify(bytes.as_slice()).expect("verify");
    assert_eq!(manifest.format_version, FORMAT_VERSION);
    assert_eq!(manifest.info, info());
    let motd = manifest
        .members
        .iter()
        .find(|m| m.path == "etc/motd")
        .expect("the whiteout is listed");
    assert_eq!(motd.kind, boxarchive::Kind::Whiteout);
    let index = manifest
        .members
        .iter()
        .find(|m| m.path == "srv/www/index.html")
        .expect("listed");
    assert_eq!(
        index.sha256.as_deref(),
        Some("sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
    );
    let dest = tmp.path().join("restored");
    install(bytes.as_slice(), &dest).expect("install");
    assert_eq!(tree(&dest), tree(&src));
    // Nothing but the destination is left beside it.
    let beside: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");
    fs::set_permissions(src.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dest.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Refuses `bytes` on verify and on install, installing nothing; the error.
fn refused(bytes: &[u8]) -> ArchiveError {
    let tmp = tempfile::tempdir().unwrap();
    let e = verify(bytes).expect_err("verify refuses");
    let dest = tmp.path().join("restored");
    install(bytes, &dest).expect_err("install refuses");
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "nothing installed, nothing left: {left:?}");
    e
}

#[test]
fn one_flipped_byte_anywhere_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("upper");
    disk(&src);
    let bytes = archive_of(&src);
    for at in [bytes.len() / 5, bytes.len() / 2, bytes.len() - 10] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        refused(&damaged);
    }
    // Every single byte, the tar's padding and end blocks and zstd's own checksum (the last
    // four bytes) included: reading goes on to the end of the compressed stream. A flip passes
    // only where it changes nothing decoded (a frame header's window size, an unused bit of a
    // bitstream), which the content checksum proves.
    let decoded = zstd::decode_all(bytes.as_slice()).unwrap();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        if verify(damaged.as_slice()).is_ok() {
            assert!(
                at < bytes.len() - 4,
                "the checksum's byte {at} was not checked"
            );
            let same = zstd::decode_all(damaged.as_slice()).ok();
            assert_eq!(
                same.as_ref(),
                Some(&decoded),
                "byte {at} passed, yet decodes differently"
            );
        }
    }
    fs::set_permissions(src.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// A member of a hand-made archive: its raw name, its type, its content or link target.
type Raw<'a> = (&'a str, tar::EntryType, &'a [u8]);

/// A tar, zstd-compressed, of the manifest then `members`, names unchecked.
fn hostile(manifest: &serde_json::Value, members: &[Raw<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let json = serde_json::to_vec(manifest).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, MANIFEST, json.as_slice()).unwrap();
    for (name, kind, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        // Raw, unchecked: `..` and absolute names are what an attacker writes.
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
            h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
            h.set_size(0);
            h.set_cksum();
            tar.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
    }
    let raw = tar.into_inner().unwrap();
    zstd::encode_all(raw.as_slice(), 3).unwrap()
}

fn manifest_listing(members: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::to_value(info()).unwrap();
    m["formatVersion"] = FORMAT_VERSION.into();
    m["members"] = members;
    m
}

fn file_member(path: &str, data: &[u8]) -> serde_json::Value {
    use sha2::Digest;
    serde_json::json!({
        "path": path, "kind": "file", "mode": 0o644, "size": data.len(),
        "sha256": format!("sha256:{}", hex::encode(sha2::Sha256::digest(data))),
    })
}

#[test]
fn members_outside_the_root_are_refused_by_name() {
    for name in ["disk/../escape", "/etc/passwd", "../escape", "elsewhere/x"] {
        let bytes = hostile(
            &manifest_listing(serde_json::json!([])),
            &[(name, tar::EntryType::Regular, b"x")],
        );
        match refused(&bytes) {
            ArchiveError::OutsideRoot { member } => assert_eq!(member, name),
            e => panic!("{name}: {e}"),
        }
    }
    // Listed in the manifest itself: refused before anything is read.
    let bytes = hostile(
        &manifest_listing(serde_json::json!([file_member("../escape", b"x")])),
        &[],
    );
    assert!(matches!(refused(&bytes), ArchiveError::OutsideRoot { .. }));
}

#[test]
fn nothing_is_written_through_a_link_of_the_archive() {
    // `disk/a` is a link to /tmp; `disk/a/x` would land in /tmp.
    let bytes = hostile(
        &manifest_listing(serde_json::json!([
            {"path": "a", "kind": "symlink", "mode": 0o777, "target": "/tmp"},
            file_member("a/x", b"owned"),
        ])),
        &[
            ("disk/a", tar::EntryType::Symlink, b"/tmp"),
            ("disk/a/x", tar::EntryType::Regular, b"owned"),
        ],
    );
    // Verify reads it (nothing is written), install refuses it.
    verify(bytes.as_slice()).expect("verify writes nothing");
    let tmp = tempfile::tempdir().unwrap();
    match install(bytes.as_slice(), &tmp.path().join("restored")) {
        Err(ArchiveError::ThroughLink { member, link }) => {
            assert_eq!((member.as_str(), link.as_str()), ("disk/a/x", "disk/a"))
        }
        other => panic!("{other:?}"),
    }
    assert!(!Path::new("/tmp/x").exists() || fs::read("/tmp/x").unwrap() != b"owned");
}

#[test]
fn device_nodes_hard_links_unlisted_and_missing_members_are_refused() {
    let listed = manifest_listing(serde_json::json!([file_member("f", b"data")]));
    let cases: [(&[Raw<'_>], &str); 4] = [
        (&[("disk/dev", tar::EntryType::Char, b"")], "device node"),
        (
            &[("disk/f", tar::EntryType::Link, b"/etc/shadow")],
            "hard link",
        ),
        (
            &[
                ("disk/f", tar::EntryType::Regular, b"data"),
                ("disk/extra", tar::EntryType::Regular, b"x"),
            ],
            "not in the manifest",
        ),
        (&[], "missing from the archive"),
    ];
    for (members, says) in cases {
        let e = refused(&hostile(&listed, members)).to_string();
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn a_member_whose_content_differs_from_the_manifest_is_named() {
    let bytes = hostile(
        &manifest_listing(serde_json::json!([file_member("srv/data", b"original")])),
        &[("disk/srv/data", tar::EntryType::Regular, b"tampered")],
    );
    match refused(&bytes) {
        ArchiveError::Checksum { member, .. } => assert_eq!(member, "disk/srv/data"),
        e => panic!("{e}"),
    }
}

#[test]
fn a_newer_format_says_upgrade_and_a_missing_manifest_says_so() {
    let mut newer = manifest_listing(serde_json::json!([]));
    newer["formatVersion"] = (FORMAT_VERSION + 1).into();
    newer["somethingNew"] = true.into();
    let e = refused(&hostile(&newer, &[]));
    assert!(e.to_string().contains("upgrade stack"), "{e}");

    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "disk/f", b"x".as_slice()).unwrap();
    let bytes = zstd::encode_all(tar.into_inner().unwrap().as_slice(), 3).unwrap();
    let e = refused(&bytes);
    assert!(matches!(e, ArchiveError::MissingManifest { .. }), "{e}");
    let e = refused(b"not an archive at all");
    assert!(matches!(e, ArchiveError::Corrupt(_)), "{e}");
}

#[test]
fn a_file_changed_during_the_export_is_caught() {
    // The writer checksums every file, then copies it: a file that changes in between (a
    // sandbox not paused) fails the export instead of writing an archive that lies.
    struct Changing<'a>(&'a Path, bool);
    impl Write for Changing<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.1 {
                self.1 = true;
                fs::write(self.0, "changed after its checksum").unwrap();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("upper");
    fs::create_dir_all(&src).unwrap();
    // Large enough that the compressor writes out while the file is being copied.
    let mut x: u32 = 1;
    let noise: Vec<u8> = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    fs::write(src.join("log"), &noise).unwrap();
    let file = src.join("log");
    match write(&src, info(), Changing(&file, false)) {
        Err(ArchiveError::Changed { path }) => assert_eq!(path, file),
        other => panic!("{:?}", other.map(|r| r.0)),
    }
}

#[test]
fn an_opaque_directory_stays_opaque() {
    // trusted.* xattrs need root; a runner that is not root writes user.overlay.opaque.
    let name = if nix::unistd::geteuid().is_root() {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("upper");
    fs::create_dir_all(src.join("var/cache")).unwrap();
    fs::write(src.join("var/cache/new"), "only this shows\n").unwrap();
    if xattr::set(src.join("var/cache"), name, b"y").is_err() {
        eprintln!("an_opaque_directory_stays_opaque: skipped: this filesystem takes no {name}");
        return;
    }
    let bytes = archive_of(&src);
    let manifest = verify(bytes.as_slice()).expect("verify");
    let cache = manifest
        .members
        .iter()
        .find(|m| m.path == "var/cache")
        .expect("listed");
    assert!(cache.opaque);
    assert!(!manifest.members.iter().any(|m| m.path == "var" && m.opaque));
    let dest = tmp.path().join("restored");
    install(bytes.as_slice(), &dest).expect("install");
    assert_eq!(
        xattr::get(dest.join("var/cache"), name).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr::get(dest.join("var"), name).unwrap(), None);
    assert_eq!(tree(&dest), tree(&src));

    // A marker in a dir the manifest does not call opaque, and an opaque dir without its
    // marker: refused, naming the member.
    let dir = serde_json::json!({"path": "d", "kind": "dir", "mode": 0o755});
    let marker = ("disk/d/.wh..wh..opq", tar::EntryType::Regular, &b""[..]);
    let bytes = hostile(
        &manifest_listing(serde_json::json!([dir])),
        &[("disk/d", tar::EntryType::Directory, b""), marker],
    );
    match refused(&bytes) {
        ArchiveError::Unlisted { member } => assert_eq!(member, "disk/d/.wh..wh..opq"),
        e => panic!("{e}"),
    }
    let opaque = serde_json::json!({"path": "d", "kind": "dir", "mode": 0o755, "opaque": true});
    let bytes = hostile(
        &manifest_listing(serde_json::json!([opaque])),
        &[("disk/d", tar::EntryType::Directory, b"")],
    );
    match refused(&bytes) {
        ArchiveError::Missing { member } => assert_eq!(member, "disk/d/.wh..wh..opq"),
        e => panic!("{e}"),
    }
}
