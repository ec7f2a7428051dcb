//! The BoxLite box driver (`--features microvm`) against a real registry and BoxLite's real
//! runtime, as far as this host lets a box get: the image is resolved in the registry, the box
//! is created and its image pulled by BoxLite over plain HTTP, pinned to the digest. Where the
//! host boot's verdict says boxes boot, the sandbox then runs a command and is deleted; where
//! it says they do not (`kvm-pvm`, our CI), the boot must fail as a boot, not as anything
//! before it, and leave no box and no dir behind. The booting part is skipped with the
//! verdict's reason.

use std::path::PathBuf;
use std::time::Duration;

use sandbox::microvm::{runtime, MicrovmConfig, MicrovmDriver, MicrovmError};
use sandbox::verdict;
use sandbox::{CreateOptions, DriverError, ExecOptions, Home, ImageRef, PullError, SandboxId};

use crate::support::Registry;

/// This host boot's verdict: `STACK_BOOT_PROBE`, or the checkout's own stack state dir.
fn host_verdict() -> Result<verdict::BootVerdict, verdict::VerdictError> {
    let path = std::env::var_os("STACK_BOOT_PROBE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.stack/boxlite/boot-probe.json"),
        PathBuf::from,
    );
    verdict::read(&path, &verdict::current_boot_id())
}

#[tokio::test]
async fn a_box_is_made_from_the_registry_and_boots_or_fails_as_a_boot_leaving_nothing() {
    const TEST: &str = "a BoxLite sandbox's boot and exec";
    if let Err(e) = runtime::export() {
        eprintln!("skipped: {TEST} ({e})");
        return;
    }
    let registry = Registry::start().await;
    let (digest, _) = registry.push_busybox("boxlite/busybox", "latest").await;
    let home = tempfile::tempdir().expect("home");
    let driver = MicrovmDriver::open(
        Home::new(home.path()),
        MicrovmConfig {
            registry: registry.host.clone(),
            boot_timeout: Duration::from_secs(60),
        },
    )
    .expect("open BoxLite on the runner's home");

    // Resolved in the registry, nothing downloaded; a missing image is NotFound.
    let reference = ImageRef::parse(&registry.image("boxlite/busybox:latest")).expect("ref");
    let image = driver.resolve(&reference).await.expect("resolve");
    assert_eq!(image.digest, digest);
    let missing = ImageRef::parse(&registry.image("boxlite/nope:1")).expect("ref");
    assert!(matches!(
        driver.resolve(&missing).await,
        Err(PullError::NotFound { .. })
    ));
    assert!(std::fs::read_dir(home.path().join("images/layers"))
        .expect("layers dir")
        .next()
        .is_none());

    let id = SandboxId::parse(&format!("mv-{}", std::process::id())).expect("id");
    let created = driver.create(&id, &image, &CreateOptions::default()).await;
    let verdict = host_verdict();
    match created {
        Ok(sb) => {
            assert_eq!(sb.status, sandbox::Status::Running);
            let out = driver
                .exec(&id, "echo $GREETING; exit 3", &ExecOptions::default())
                .await
                .expect("exec");
            assert_eq!((out.exit_code, out.stdout), (3, b"hello\n".to_vec()));
            let adopted = driver.adopt().await.expect("adopt");
            assert_eq!(
                adopted.sandboxes.iter().map(|s| &s.id).collect::<Vec<_>>(),
                vec![&id]
            );
        }
        Err(DriverError::Microvm(MicrovmError::Boot { source, .. })) => {
            // The image was pulled and prepared; the VM itself did not start.
            match &verdict {
                Ok(v) => assert!(
                    !v.ok,
                    "the probe booted a box and this one failed: {source}"
                ),
                Err(e) => eprintln!("no verdict to compare with: {e}"),
            }
            let why = match &verdict {
                Ok(v) => format!("boxes cannot boot on this host: {}", v.reason),
                Err(e) => format!("whether boxes boot here is unknown: {e}"),
            };
            eprintln!("skipped: {TEST} ({why}); the box failed its boot: {source}");
        }
        Err(e) => panic!("create failed before the boot: {}", describe(&e)),
    }
    driver.delete(&id).await.expect("delete");
    assert!(driver.state(&id).await.expect("state").is_none());
    let left = driver.adopt().await.expect("adopt");
    assert!(
        left.sandboxes.is_empty() && left.stopped.is_empty() && left.stale.is_empty(),
        "{left:?}"
    );
    assert!(std::fs::read_dir(home.path().join("sandboxes"))
        .expect("sandboxes dir")
        .next()
        .is_none());
}

fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
