//! A real `docker-registry` (distribution v2, Debian's package) serving from a temp dir on a free
//! loopback port, configured as services/registry/config.yml configures the stack's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// A running registry; killed and reaped on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    host: String,
    child: Child,
}

impl Registry {
    /// Starts the registry on a free port and waits (up to 15 s) for its `/v2/` to answer.
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: error }}\nstorage:\n  filesystem: {{ rootdirectory: \"{}\" }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: \"127.0.0.1:{port}\"\n",
                storage.display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry, scripts/install-deps.sh)");
        let reg = Registry {
            dir,
            host: format!("127.0.0.1:{port}"),
            child,
        };
        let url = format!("http://{}/v2/", reg.host);
        let http = reqwest::Client::new();
        wait_for("the registry's /v2/", Duration::from_secs(15), || {
            let req = http.get(&url);
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(drop)
            }
        })
        .await;
        reg
    }

    /// `127.0.0.1:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The temp dir holding its config, log and `storage/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
