//! Every path of the state directory, in one type. Nothing the tool writes lives elsewhere.
//!
//! ```text
//! <state>/stack.lock            serialises mutating commands
//! <state>/data/<service>/       the service's data (${data_dir})
//! <state>/logs/<service>.log    its log (rotated to .log.1)
//! <state>/run/<service>.json    its supervisor record (pid + start time, hash, ports, state)
//! <state>/run/<service>.lock    held by its supervisor for as long as it lives
//! <state>/run/<service>.spec.json  what its supervisor runs
//! <state>/run/<service>.ready.json  health and timings learned by `up`
//! <state>/run/<service>.build.json  its last successful build (`build:`)
//! <state>/logs/<service>.build.log  the output of its last build
//! <state>/secrets/<name>        generated secrets, mode 0600
//! ```

use std::io;
use std::path::{Path, PathBuf};

/// The state directory of one stack.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root` (not created until [`Layout::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// Creates the directories.
    pub fn create(&self) -> io::Result<()> {
        for d in [self.data_root(), self.logs_dir(), self.run_dir()] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `data/`.
    pub fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }

    /// `data/<service>/`.
    pub fn data_dir(&self, service: &str) -> PathBuf {
        self.data_root().join(service)
    }

    /// `logs/`.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `logs/<service>.log`.
    pub fn log_file(&self, service: &str) -> PathBuf {
        self.logs_dir().join(format!("{service}.log"))
    }

    /// `run/`.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// `run/<service>.json`.
    pub fn record(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.json"))
    }

    /// `run/<service>.lock`.
    pub fn service_lock(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.lock"))
    }

    /// `run/<service>.spec.json`.
    pub fn supervisor_spec(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.spec.json"))
    }

    /// `run/<service>.ready.json`.
    pub fn readiness(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.ready.json"))
    }

    /// `run/<service>.step.json`: the process group of an init step while it runs.
    pub fn step_record(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.step.json"))
    }

    /// `logs/<service>.build.log`: the output of its last build.
    pub fn build_log(&self, service: &str) -> PathBuf {
        self.logs_dir().join(format!("{service}.build.log"))
    }

    /// `run/<service>.build.json`: its last successful build (inputs' hash, time, duration).
    pub fn build_record(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.build.json"))
    }

    /// `secrets/`.
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// `secrets/<name>` (mode 0600).
    pub fn secret(&self, name: &str) -> PathBuf {
        self.secrets_dir().join(name)
    }

    /// `stack.lock`.
    pub fn stack_lock(&self) -> PathBuf {
        self.root.join("stack.lock")
    }

    /// `boxlite/`: what the microVM backend owns (BoxLite homes, the boot probe).
    pub fn boxlite_dir(&self) -> PathBuf {
        self.root.join("boxlite")
    }

    /// `boxlite/<service>/`: the BoxLite home of one service's box. BoxLite locks a home for
    /// one process, and each box has its own supervisor, so each has its own home.
    pub fn box_home(&self, service: &str) -> PathBuf {
        self.boxlite_dir().join(service)
    }

    /// `run/<service>.sock`: the box supervisor's control socket (exec in the box).
    pub fn box_socket(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.sock"))
    }

    /// `boxlite/boot-probe.json`: the last microVM boot probe's verdict, for this host boot.
    pub fn boot_probe(&self) -> PathBuf {
        self.boxlite_dir().join("boot-probe.json")
    }
}
