//! A real Garage (the S3 server of the stack's `minio` role) serving from a temp dir on free
//! loopback ports, configured as services/minio/garage.toml configures the stack's and
//! bootstrapped by the stack's own services/minio/bootstrap.sh (layout, key, buckets).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The key the tests sign with (Garage wants `GK` + 24 hex digits, and 64 hex digits).
pub const ACCESS_KEY: &str = "GK7e57b0c5000000000000000a";
/// Its secret.
pub const SECRET_KEY: &str = "7e57b0c57e57b0c57e57b0c57e57b0c57e57b0c57e57b0c57e57b0c57e57b0c5";
/// The region it signs with.
pub const REGION: &str = "us-east-1";

/// A running Garage; killed and reaped on drop.
pub struct Garage {
    dir: tempfile::TempDir,
    s3_port: u16,
    child: Option<Child>,
}

impl Garage {
    /// Starts Garage on free ports and bootstraps it with `buckets` (up to 60 s).
    pub fn start(buckets: &[&str]) -> Garage {
        let dir = tempfile::tempdir().expect("temp dir");
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let data = dir.path().display().to_string();
        let config = format!(
            "metadata_dir = \"{data}/meta\"\ndata_dir = \"{data}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{SECRET_KEY}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.localhost\"\n\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n"
        );
        std::fs::write(dir.path().join("garage.toml"), config).expect("write garage.toml");
        let mut garage = Garage {
            dir,
            s3_port: s3,
            child: None,
        };
        garage.restart();
        garage.bootstrap(buckets);
        garage
    }

    /// Starts the server (again, on the same dir and ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "garage is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("garage log");
        let child = Command::new("garage")
            .arg("-c")
            .arg(self.config())
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("garage (scripts/install-deps.sh builds it into /opt/stack-tools)");
        self.child = Some(child);
    }

    /// Runs services/minio/bootstrap.sh until it succeeds (it exits 1 while Garage starts).
    fn bootstrap(&mut self, buckets: &[&str]) {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/minio/bootstrap.sh");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("bash")
                .arg(&script)
                .arg(self.config())
                .args([ACCESS_KEY, SECRET_KEY])
                .args(buckets)
                .stdin(Stdio::null())
                .output()
                .expect("run bash services/minio/bootstrap.sh");
            if out.status.success() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && out.status.code() != Some(78) && Instant::now() < deadline,
                "garage's bootstrap failed ({}, garage {exited:?}): {}\n{}\ngarage's log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
            );
        }
    }

    /// Its config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    /// The S3 endpoint, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// SIGKILLs the server (the object store going down) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}
