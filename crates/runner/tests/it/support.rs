//! Test support: a real `docker-registry` holding the real busybox image (pushed with skopeo from
//! the layout scripts/build-images.sh made), the real `runner` binary as a process on a free
//! loopback port with its own home, and a stand-in control plane that records the runner's calls.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// The token every test runner is given.
pub const TOKEN: &str = "test-runner-token-0123456789";
/// The capacity every test runner is given.
pub const CAPACITY: usize = 30;
/// The busybox image's OCI layout, built by scripts/build-images.sh.
const BUSYBOX_LAYOUT: &str = "/opt/stack-tools/images/busybox";

pub use testbed::{free_port, skip_unless_root, wait_for};

/// A name unique to this test process and call (sandbox ids and cgroups are host-wide).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The stack's registry as a test's: a real `docker-registry` holding `boxlite/busybox:latest`.
pub struct Registry {
    _inner: testbed::Registry,
    pub host: String,
}

impl Registry {
    /// Starts a registry and pushes the busybox image into it with skopeo, as the stack's
    /// `images` task does.
    pub async fn with_busybox() -> Registry {
        assert!(
            Path::new(BUSYBOX_LAYOUT).join("index.json").is_file(),
            "no busybox image at {BUSYBOX_LAYOUT}: run scripts/install-deps.sh (it runs scripts/build-images.sh)"
        );
        let inner = testbed::Registry::start().await;
        let host = inner.host().to_string();
        let pushed = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{BUSYBOX_LAYOUT}:latest"))
            .arg(format!("docker://{host}/boxlite/busybox:latest"))
            .status()
            .expect("skopeo (scripts/install-deps.sh)");
        assert!(pushed.success(), "skopeo copy of busybox: {pushed}");
        Registry {
            _inner: inner,
            host,
        }
    }
}

/// A registry with the busybox image and a runner on it, calling a control plane on `cp_port`,
/// for a test that needs root; `None` (saying why) when not root.
pub async fn for_root(cp_port: u16) -> Option<(Registry, Runner)> {
    // The test harness names each test's thread after the test (`#[tokio::test]` runs on it).
    let thread = std::thread::current();
    if skip_unless_root(thread.name().unwrap_or("a runner test")) {
        return None;
    }
    let registry = Registry::with_busybox().await;
    let runner = Runner::start(&registry, cp_port).await;
    Some((registry, runner))
}

/// What the stand-in control plane saw: `(path, body)` per call.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<(String, Value)>>>);

impl Calls {
    pub fn all(&self) -> Vec<(String, Value)> {
        self.0.lock().expect("calls").clone()
    }

    pub fn count(&self, suffix: &str) -> usize {
        self.all()
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .count()
    }

    pub fn last(&self, suffix: &str) -> Option<Value> {
        self.all()
            .into_iter()
            .rev()
            .find(|(p, _)| p.ends_with(suffix))
            .map(|(_, b)| b)
    }
}

/// A stand-in for the control plane's two runner calls, since the real control plane is written
/// on another branch: `register` records the runner and answers 200; `heartbeat` answers 204 for a
/// registered runner and 404 otherwise, as a restarted control plane that lost it would. Calls
/// without the runner token get 401.
pub struct ControlPlane {
    pub port: u16,
    pub calls: Calls,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    pub async fn start(port: u16) -> ControlPlane {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::post;

        #[derive(Clone)]
        struct St {
            calls: Calls,
            known: Arc<Mutex<Vec<String>>>,
        }
        fn authorized(h: &HeaderMap) -> bool {
            h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
        }
        async fn register(
            State(st): State<St>,
            h: HeaderMap,
            axum::Json(body): axum::Json<Value>,
        ) -> (StatusCode, axum::Json<Value>) {
            if !authorized(&h) {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "token"})),
                );
            }
            st.calls
                .0
                .lock()
                .expect("calls")
                .push(("/api/runners/register".into(), body.clone()));
            let name = body["name"].as_str().unwrap_or_default().to_string();
            st.known.lock().expect("known").push(name);
            (StatusCode::OK, axum::Json(body))
        }
        async fn heartbeat(
            State(st): State<St>,
            UrlPath(name): UrlPath<String>,
            h: HeaderMap,
            axum::Json(body): axum::Json<Value>,
        ) -> StatusCode {
            if !authorized(&h) {
                return StatusCode::UNAUTHORIZED;
            }
            if !st.known.lock().expect("known").contains(&name) {
                return StatusCode::NOT_FOUND;
            }
            st.calls
                .0
                .lock()
                .expect("calls")
                .push((format!("/api/runners/{name}/heartbeat"), body));
            StatusCode::NO_CONTENT
        }

        let calls = Calls::default();
        let st = St {
            calls: calls.clone(),
            known: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/api/runners/register", post(register))
            .route("/api/runners/:name/heartbeat", post(heartbeat))
            .with_state(st);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the control plane's port");
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        ControlPlane {
            port,
            calls,
            stop,
            server,
        }
    }

    /// Stops serving and closes every connection (a control plane going down).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

/// The real `runner` binary on a free port with its own temp home; SIGKILLed on drop, its
/// sandboxes then removed (containers, mounts, cgroups) so a failed test leaves nothing running.
pub struct Runner {
    pub name: String,
    pub port: u16,
    pub home: tempfile::TempDir,
    env: BTreeMap<String, String>,
    /// The uid (and gid) the runner runs as; `None`: as the test, root.
    uid: Option<u32>,
    child: Option<Child>,
    log: PathBuf,
    http: reqwest::Client,
}

impl Runner {
    /// Starts a runner pulling from `registry` and calling the control plane on `cp_port`.
    pub async fn start(registry: &Registry, cp_port: u16) -> Runner {
        Self::start_as(registry, cp_port, None).await
    }

    /// Starts a runner as `uid` (its gid the same number, no supplementary groups), its home
    /// owned by that user; as the test's own user (root) for `None`.
    pub async fn start_as(registry: &Registry, cp_port: u16, uid: Option<u32>) -> Runner {
        Self::start_with(&registry.host, cp_port, uid, &[]).await
    }

    /// [`Runner::start_as`] pulling from the registry at `registry` (`host:port`), with `extra`
    /// settings on top of the usual ones (`RUNNER_OUTBOUND`, `RUNNER_DRIVER`, ...).
    pub async fn start_with(
        registry: &str,
        cp_port: u16,
        uid: Option<u32>,
        extra: &[(&str, &str)],
    ) -> Runner {
        let home = tempfile::tempdir().expect("runner home");
        if let Some(uid) = uid {
            std::os::unix::fs::chown(home.path(), Some(uid), Some(uid)).expect("chown the home");
        }
        let name = unique("rt");
        let port = free_port();
        let env: BTreeMap<String, String> = [
            ("RUNNER_NAME", name.clone()),
            ("RUNNER_PORT", port.to_string()),
            ("RUNNER_HOME", home.path().display().to_string()),
            ("RUNNER_TOKEN", TOKEN.to_string()),
            ("CONTROL_PLANE_URL", format!("http://127.0.0.1:{cp_port}")),
            ("REGISTRY_URL", format!("http://{registry}")),
            // Room for the 21 sandboxes of the bench.
            ("RUNNER_CAPACITY", CAPACITY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
        let log = home.path().join("runner.log");
        let mut runner = Runner {
            name,
            port,
            home,
            env,
            uid,
            child: None,
            log,
            http: reqwest::Client::new(),
        };
        runner.restart().await;
        runner
    }

    /// Starts the process (again, on the same home and port) and waits for `/healthz`.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the runner is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("runner log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_runner"));
        if let Some(uid) = self.uid {
            // std drops the supplementary groups (setgroups) before setuid when run by root.
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
        }
        let child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start the runner binary");
        self.child = Some(child);
        let url = self.url("/healthz");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.http.get(&url).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "the runner's /healthz did not answer within 30 s ({}); its log:\n{}",
                exited.map_or("still running".into(), |s| s.to_string()),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` and waits (up to `timeout`) for the process to exit.
    pub async fn signal(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> ExitStatus {
        let mut child = self.child.take().expect("the runner is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the runner");
        wait_for("the runner to exit", timeout, || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    /// The runner's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A request with the runner token.
    pub fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(TOKEN)
    }

    /// `POST path` with a JSON body: the status and the JSON answer (`null` if none).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        read(self.call(reqwest::Method::POST, path).json(&body)).await
    }

    /// `GET path`: the status and the JSON answer.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        read(self.call(reqwest::Method::GET, path)).await
    }

    /// Creates a busybox sandbox, expecting 201.
    pub async fn create(&self, id: &str) {
        let (status, body) = self
            .post(
                "/sandboxes",
                json!({"id": id, "image": "boxlite/busybox:latest"}),
            )
            .await;
        assert_eq!(status, 201, "create {id}: {body}");
    }

    /// Runs `command` in sandbox `id`, expecting a 200: (exitCode, result, stderr).
    pub async fn exec(&self, id: &str, command: &str) -> (i64, String, String) {
        let (status, body) = self
            .post(
                &format!("/sandboxes/{id}/exec"),
                json!({"command": command}),
            )
            .await;
        assert_eq!(status, 200, "exec {command:?} in {id}: {body}");
        (
            body["exitCode"].as_i64().expect("exitCode"),
            body["result"].as_str().expect("result").to_string(),
            body["stderr"].as_str().expect("stderr").to_string(),
        )
    }

    /// Asserts that none of the runner's sandboxes runs: no mount under its home, no runc state,
    /// no process in their cgroups.
    pub fn assert_nothing_running(&self) {
        assert!(self.mounts().is_empty(), "mounts left: {:?}", self.mounts());
        assert!(
            self.runc_state().is_empty(),
            "runc state left: {:?}",
            self.runc_state()
        );
        let left = self.sandbox_processes();
        assert!(left.is_empty(), "processes left: {left:?}");
    }

    /// Children of the runner process that have exited and not been reaped.
    pub fn zombie_children(&self) -> Vec<i32> {
        let Some(me) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        processes(|p| p.zombie && p.ppid == me)
    }

    /// Mount points under this runner's home.
    pub fn mounts(&self) -> Vec<String> {
        let home = self.home.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&home))
            .map(str::to_string)
            .collect()
    }

    /// Containers in this runner's runc state dir.
    pub fn runc_state(&self) -> Vec<String> {
        entries(&self.home.path().join("runc"))
    }

    /// Sandbox dirs in this runner's home.
    pub fn sandbox_dirs(&self) -> Vec<String> {
        entries(&self.home.path().join("sandboxes"))
    }

    /// Live (non-zombie) processes whose cgroup is one of this runner's sandboxes'.
    pub fn sandbox_processes(&self) -> Vec<i32> {
        let marker = format!("stack-sandboxes/{}/", self.name);
        processes(|p| !p.zombie && p.cgroup.contains(&marker))
    }
}

/// What the tests look at of a process, from /proc.
struct Proc {
    zombie: bool,
    ppid: u32,
    cgroup: String,
}

/// The pids of the host's processes for which `keep` holds.
fn processes(keep: impl Fn(&Proc) -> bool) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: the fields after the last `)` are fixed.
            let mut fields = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace())
                .into_iter()
                .flatten();
            let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
                return false;
            };
            keep(&Proc {
                zombie: state == "Z",
                ppid: ppid.parse().unwrap_or(0),
                cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
            })
        })
        .collect()
}

/// Sends a request: the status and its JSON answer (`null` when the body is not JSON).
pub async fn read(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The pid of the namespace holder a runner that is not root recorded in `home`, if any.
pub fn holder_pid(home: &Path) -> Option<i32> {
    let record: Value =
        serde_json::from_slice(&std::fs::read(home.join("holder.json")).ok()?).ok()?;
    record["pid"].as_i64().map(|p| p as i32)
}

/// The user namespace of process `pid` (`user:[inode]`), if it is alive.
pub fn user_namespace(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/user"))
        .ok()
        .map(|l| l.display().to_string())
}

/// Live processes in user namespace `ns` (as [`user_namespace`] names it).
pub fn processes_in(ns: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .is_none_or(|s| s == "Z");
            !zombie && user_namespace(pid).as_deref() == Some(ns)
        })
        .collect()
}

/// Mount points under `prefix` in the mount namespace of process `pid` (`self` for the test's).
pub fn mounts_of(pid: &str, prefix: &Path) -> Vec<String> {
    let prefix = prefix.display().to_string();
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A runner that is not root: everything in its user namespace goes with its holder
        // (its sandboxes' mounts live only in the holder's mount namespace).
        if let Some(ns) = holder_pid(self.home.path()).and_then(user_namespace) {
            for pid in processes_in(&ns) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Sandboxes with outbound access: their slirp4netns (which would end by itself only once
        // the init is reaped, and nothing reaps it with the runner gone).
        testbed::outside::kill_slirps(&self.home.path().display().to_string());
        let runc_root = self.home.path().join("runc");
        for id in entries(&runc_root) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &id])
                .status();
        }
        for target in self.mounts() {
            let _ = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // The runner's cgroup parent in every v1 controller (its sandboxes' are gone).
        for controller in entries(Path::new("/sys/fs/cgroup")) {
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("stack-sandboxes")
                .join(&self.name);
            let _ = std::fs::remove_dir(dir);
        }
    }
}
