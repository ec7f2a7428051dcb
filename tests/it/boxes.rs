//! `stack box verify FILE`: an archive written by the platform's own library verifies, with a
//! summary (table or JSON), outside any project; a damaged one, a missing file and a file that is
//! no archive exit 1 saying what is wrong.

use crate::harness::bin;

fn verify(dir: &std::path::Path, args: &[&str]) -> crate::harness::Run {
    std::process::Command::new(bin())
        .arg("box")
        .arg("verify")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run stack")
        .into()
}

#[test]
fn box_verify_checks_an_archive_outside_any_project() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = tmp.path().join("upper");
    std::fs::create_dir_all(disk.join("srv")).expect("mkdir");
    std::fs::write(disk.join("srv/index.html"), "hello\n").expect("write");
    std::fs::write(disk.join("srv/data.bin"), vec![7u8; 100_000]).expect("write");
    let info = boxarchive::BoxInfo {
        box_id: "sbx-1".into(),
        name: Some("demo".into()),
        image: "boxlite/busybox:latest".into(),
        image_digest: format!("sha256:{}", "cd".repeat(32)),
        options: serde_json::json!({}),
        exported_at: "2026-12-01T00:00:00Z".into(),
    };
    let (_, bytes) = boxarchive::write(&disk, info, Vec::new()).expect("write the archive");
    let archive = tmp.path().join("sbx-1.boxlite");
    std::fs::write(&archive, &bytes).expect("save");

    let r = verify(tmp.path(), &["sbx-1.boxlite"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("sbx-1.boxlite: ok, format 1: box sbx-1 (demo), image boxlite/busybox:latest@sha256:cdcd")
            && r.stdout.contains("3 members, 100006 bytes"),
        "{}",
        r.stdout
    );
    let r = verify(tmp.path(), &["--json", "sbx-1.boxlite"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["boxId"].as_str(), v["members"].as_u64()),
        (Some("sbx-1"), Some(3))
    );

    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(tmp.path().join("damaged.boxlite"), &damaged).expect("save");
    let r = verify(tmp.path(), &["damaged.boxlite"]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(
        r.stderr.contains("damaged.boxlite does not verify"),
        "{}",
        r.stderr
    );

    std::fs::write(tmp.path().join("notes.txt"), "not an archive").expect("save");
    let r = verify(tmp.path(), &["notes.txt"]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stderr.contains("the archive is damaged"), "{}", r.stderr);

    let r = verify(tmp.path(), &["missing.boxlite"]);
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(
        r.stderr.contains("cannot open missing.boxlite"),
        "{}",
        r.stderr
    );
}
