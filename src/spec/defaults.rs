//! Every value a stack definition may leave out, named once: the parsers start from these, and
//! docs and tests can refer to them instead of repeating the numbers.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::{BackendChoice, Condition, InitPhase, RestartPolicy};

/// The names `stack.yaml` may have, looked for in this order.
pub const STACK_FILE_NAMES: &[&str] = &["stack.yaml", "stack.yml"];
/// The directory beside `stack.yaml` holding one file per service.
pub const SERVICES_DIR: &str = "services";
/// The state directory beside `stack.yaml` when neither `--state-dir` nor `STACK_STATE_DIR` is set.
pub const STATE_DIR: &str = ".stack";
/// The project name when `name:` is absent and the root directory has no name (`/`).
pub const STACK_NAME: &str = "stack";
/// `backend:` of `stack.yaml`.
pub const BACKEND: BackendChoice = BackendChoice::Auto;

/// `process.stop_signal`.
pub const STOP_SIGNAL: Signal = Signal::SIGTERM;
/// `process.stop_grace_period`: time between the stop signal and SIGKILL.
pub const STOP_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// `restart:`.
pub const RESTART: RestartPolicy = RestartPolicy::OnFailure;
/// `condition:` of a `depends_on` entry (and every entry of a plain list).
pub const CONDITION: Condition = Condition::ServiceStarted;

/// `healthcheck.interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// `healthcheck.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// `healthcheck.start_period`.
pub const HEALTH_START_PERIOD: Duration = Duration::ZERO;
/// `healthcheck.retries`: with the interval, about 30 s before a service counts as unhealthy.
pub const HEALTH_RETRIES: u32 = 120;
/// `host:` of a `tcp`, `redis`, `postgres` or `s3` probe.
pub const PROBE_HOST: &str = "127.0.0.1";
/// `user:` of a `postgres` probe (its `database:` defaults to the user).
pub const POSTGRES_USER: &str = "postgres";
/// `region:` of an `s3` probe.
pub const S3_REGION: &str = "us-east-1";

/// `when:` of an init step.
pub const INIT_PHASE: InitPhase = InitPhase::BeforeStart;
/// `mode:` of a `configs:` entry.
pub const CONFIG_MODE: u32 = 0o644;
