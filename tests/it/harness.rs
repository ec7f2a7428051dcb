//! A small builder for integration tests: a project in a temporary directory, the real `stack`
//! binary run against it, free loopback ports, and cleanup (`stack down`) when the test ends.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository: where components' builds run and the default services come from.
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default stack's infrastructure (postgres, redis, minio, dex, registry, caddy) on free
/// ports. Returns the project and the host port given to each of: postgres, redis, s3,
/// s3admin, s3rpc, dex, registry, caddy, caddyadmin.
pub fn default_infrastructure(
    name: &str,
) -> (Project, std::collections::BTreeMap<&'static str, u16>) {
    let roles = [
        "postgres",
        "redis",
        "s3",
        "s3admin",
        "s3rpc",
        "dex",
        "registry",
        "caddy",
        "caddyadmin",
    ];
    let ports: std::collections::BTreeMap<&'static str, u16> =
        roles.iter().map(|r| (*r, free_port())).collect();
    let p = Project::new(name);
    p.default_service("postgres", 25432, ports["postgres"])
        .default_service("redis", 26379, ports["redis"])
        .default_service_ports(
            "minio",
            &[
                (29000, ports["s3"]),
                (29001, ports["s3admin"]),
                (29002, ports["s3rpc"]),
            ],
        )
        .default_service("dex", 25556, ports["dex"])
        .default_service("registry", 25000, ports["registry"])
        .default_service_ports(
            "caddy",
            &[(28080, ports["caddy"]), (12019, ports["caddyadmin"])],
        );
    (p, ports)
}

/// [`default_infrastructure`] with the schema, the seed and the platform's `components` (their
/// `build:` run in the repository, see [`Project::build_in_repository`]); each component's port
/// is in the map too.
pub fn default_platform(
    name: &str,
    components: &[&'static str],
) -> (Project, std::collections::BTreeMap<&'static str, u16>) {
    let (p, mut ports) = default_infrastructure(name);
    for c in components {
        ports.insert(*c, free_port());
    }
    p.default_service_ports("schema", &[])
        .default_service_ports("seed", &[])
        .migrations();
    // Each component's default port, as its service file writes it.
    let defaults = [
        ("api", 23001),
        ("proxy", 24000),
        ("runner-a", 23003),
        ("runner-b", 23004),
    ];
    for c in components {
        let default = defaults
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("no default port known for {c}"));
        p.default_service(c, default, ports[c])
            .build_in_repository(c);
    }
    if components.iter().any(|c| c.starts_with("runner")) {
        p.default_service_ports("images", &[]);
    }
    // Caddy's routes and the components read the same two variables.
    let shared = std::fs::read_to_string(p.dir.join("stack.env")).expect("stack.env");
    let api = ports.get("api").copied().unwrap_or(23001);
    let proxy = ports.get("proxy").copied().unwrap_or(24000);
    p.write(
        "stack.env",
        &format!("{shared}CONTROL_PLANE_PORT={api}\nPREVIEW_PROXY_PORT={proxy}\n"),
    );
    (p, ports)
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stack"))
}

/// A port that was free a moment ago on 127.0.0.1, and never handed out before by this test
/// binary: the kernel may give a just-released port again, and two services of one test stack
/// (or two tests running at once) must not be given the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if given.insert(port) {
            return port;
        }
    }
}

/// Is something listening on 127.0.0.1:`port`?
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// Polls `f` until it is true or `timeout` passes (tests wait on conditions, not on sleeps).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a future to completion on a fresh single-threaded runtime (tests are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The result of one `stack` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A project directory with a stack.yaml and services, torn down on drop.
pub struct Project {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Project {
    /// An empty project named `name` (stack.yaml with the process backend).
    pub fn new(name: &str) -> Project {
        let tmp = tempfile::Builder::new()
            .prefix("stack-it-")
            .tempdir()
            .expect("tempdir");
        // Services may run as an unprivileged user that must be able to reach their data dirs.
        set_mode(tmp.path(), 0o755);
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("services")).expect("mkdir");
        let p = Project { _tmp: tmp, dir };
        p.write("stack.yaml", &format!("name: {name}\nbackend: process\n"));
        p
    }

    /// Writes a file relative to the project.
    pub fn write(&self, rel: &str, text: &str) -> &Project {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
        self
    }

    /// Adds `services/<name>.yaml`.
    pub fn service(&self, name: &str, yaml: &str) -> &Project {
        self.write(&format!("services/{name}.yaml"), yaml)
    }

    /// A python http.server service on `port`, healthy when it answers.
    pub fn http_service(&self, name: &str, port: u16, deps: &[&str]) -> &Project {
        let mut y = format!(
            "ports: {{ http: {port} }}\nprocess:\n  command: [python3, -m, http.server, \"${{port.http}}\", --bind, 127.0.0.1, --directory, \"${{data_dir}}\"]\nhealthcheck:\n  http: {{ url: \"http://127.0.0.1:${{port.http}}/\" }}\n  interval: 100ms\n"
        );
        if !deps.is_empty() {
            y.push_str("depends_on:\n");
            for d in deps {
                y.push_str(&format!("  {d}: {{ condition: service_healthy }}\n"));
            }
        }
        self.service(name, &y)
    }

    /// Copies a default service of the repository (and its config dir), replacing its port.
    pub fn default_service(&self, name: &str, old_port: u16, new_port: u16) -> &Project {
        self.default_service_ports(name, &[(old_port, new_port)])
    }

    /// Copies a default service of the repository, replacing each `(old, new)` port. Its config
    /// dir is copied, or linked when it holds installed packages (node_modules).
    pub fn default_service_ports(&self, name: &str, ports: &[(u16, u16)]) -> &Project {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(root.join(format!("services/{name}.yaml")))
            .expect("default service file");
        for (old, new) in ports {
            assert!(text.contains(&old.to_string()), "{name} uses {old}");
            text = text.replace(&old.to_string(), &new.to_string());
        }
        self.service(name, &text);
        self.shared_values();
        let extra = root.join("services").join(name);
        if extra.join("node_modules").is_dir() {
            std::os::unix::fs::symlink(&extra, self.dir.join("services").join(name))
                .expect("symlink");
        } else if extra.is_dir() {
            for e in std::fs::read_dir(extra).expect("read dir").flatten() {
                let rel = format!("services/{name}/{}", e.file_name().to_string_lossy());
                self.write(&rel, &std::fs::read_to_string(e.path()).expect("read"));
            }
        }
        self
    }

    /// Gives the project the repository's `stack.env` (the values default services share, such
    /// as the S3 key), read through `env_file:` as the default stack reads it.
    fn shared_values(&self) {
        if self.dir.join("stack.env").exists() {
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        self.write(
            "stack.env",
            &std::fs::read_to_string(root.join("stack.env")).expect("stack.env"),
        );
        let stack_yaml = self.dir.join("stack.yaml");
        let mut text = std::fs::read_to_string(&stack_yaml).expect("stack.yaml");
        if !text.contains("env_file:") {
            text.push_str("env_file: stack.env\n");
            std::fs::write(stack_yaml, text).expect("write stack.yaml");
        }
    }

    /// Copies the repository's migrations (`sql/migrations`) into the project.
    pub fn migrations(&self) -> &Project {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for e in std::fs::read_dir(root.join("sql/migrations"))
            .expect("migrations")
            .flatten()
        {
            let rel = format!("sql/migrations/{}", e.file_name().to_string_lossy());
            self.write(&rel, &std::fs::read_to_string(e.path()).expect("read"));
        }
        self
    }

    /// Makes the `build:` of `svc` (a copied default component) run in the repository rather
    /// than in this temporary project, which has no Cargo workspace of its own: building there
    /// would build every dependency a second time. See [`Project::run_building`].
    pub fn build_in_repository(&self, svc: &str) -> &Project {
        let file = self.dir.join(format!("services/{svc}.yaml"));
        let text = std::fs::read_to_string(&file).expect("service file");
        assert!(text.contains("build:\n"), "{svc} has a build");
        let text = text.replacen(
            "build:\n",
            &format!("build:\n  working_dir: {}\n", repository().display()),
            1,
        );
        std::fs::write(file, text).expect("write service file");
        self
    }

    /// Runs `stack ARGS` as a user would for components built from the repository: with the
    /// repository's target dir, so a build reuses what `cargo build` compiled there and
    /// `${CARGO_TARGET_DIR:-target}` finds the binaries, and without what `cargo test` sets for
    /// this test (ring's build script reruns when CARGO_MANIFEST_DIR changes, and with it half
    /// the build).
    pub fn run_building(&self, args: &[&str]) -> Run {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repository().join("target"));
        let mut cmd = self.cmd(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" {
                cmd.env_remove(k);
            }
        }
        cmd.env("CARGO_TARGET_DIR", target)
            .output()
            .expect("run stack")
            .into()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(".state")
    }

    /// The project's stack definition, loaded by the library as `stack` loads it here.
    pub fn load(&self) -> stack::spec::Stack {
        stack::spec::Stack::load(&stack::spec::LoadOptions {
            cwd: self.dir.clone(),
            state_dir: Some(self.state_dir()),
            ..Default::default()
        })
        .expect("a valid stack definition")
    }

    /// A `stack` command in this project.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(&self.dir)
            .env("NO_COLOR", "1")
            .env("STACK_STATE_DIR", self.state_dir())
            .stdin(Stdio::null());
        c
    }

    /// Runs `stack ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run stack").into()
    }

    /// `status --json` as (name -> service object).
    pub fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        let r = self.run(&["status", "--json"]);
        assert_eq!(r.code, 0, "{}", r.text());
        r.json()["services"]
            .as_array()
            .expect("services array")
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_string(),
                    s.clone(),
                )
            })
            .collect()
    }

    /// The pid `status` reports for `svc`.
    pub fn pid(&self, svc: &str) -> Option<u32> {
        self.status()[svc]["pid"].as_u64().map(|p| p as u32)
    }

    /// SIGKILLs `svc` and waits (up to 30 s) until its supervisor started it again and it is
    /// healthy.
    pub fn kill_and_await_restart(&self, svc: &str) {
        let pid = self.pid(svc).unwrap_or_else(|| panic!("{svc} has no pid"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("SIGKILL {svc}: {e}"));
        assert!(
            wait_until(Duration::from_secs(30), || {
                let s = self.status();
                s[svc]["pid"].as_u64().is_some_and(|p| p as u32 != pid) && s[svc]["healthy"] == true
            }),
            "{svc} is started again and healthy after a SIGKILL"
        );
    }

    /// Live processes whose command line contains this project's state dir and `needle`.
    pub fn processes(&self, needle: &str) -> Vec<u32> {
        processes_matching(&[&self.state_dir().display().to_string(), needle])
    }
}

/// Live (non-zombie) processes whose command line contains every one of `needles`.
pub fn processes_matching(needles: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            !zombie && needles.iter().all(|n| cmd.contains(n))
        })
        .collect()
}

/// One line per pid: its state and command line, for failure messages.
pub fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            let state = state
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ");
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid} [{state}] {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Does this test run as root (services then run as their own users, and priority is shaped)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// The string field `field` of every object in the array `value[key]`, in order.
pub fn fields<'a>(value: &'a serde_json::Value, key: &str, field: &str) -> Vec<&'a str> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("no array `{key}` in {value}"))
        .iter()
        .filter_map(|v| v[field].as_str())
        .collect()
}
