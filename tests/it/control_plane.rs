//! The control plane (`api`) and the preview proxy (`proxy`) from their service files, built by
//! their `build:` step, on the default stack's PostgreSQL, Redis, dex, schema and seed (and
//! Garage and Caddy, which the seed and the preview route need), driven by real clients: the
//! dex password grant, the admin API key, redis-rs and sqlx to look at what they stored.
//!
//! The runners are this test: it registers and heartbeats over HTTP as a runner does, and runs
//! small HTTP servers that answer the control plane's and the proxy's calls per the runner API
//! of docs/platform.md. The real runner (`crates/runner`) lands separately.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, Row};

use crate::harness::{block_on, Project};

/// One request a fake runner received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    auth: String,
    body: Vec<u8>,
}

/// A runner's HTTP API, answered from memory per docs/platform.md: sandboxes are a set of ids,
/// files a map, exec answers the sandbox id (as `uname -n` does in a real sandbox), and a port
/// answers with what it was asked. Anything without the runner token is 401.
struct FakeRunner {
    name: &'static str,
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer 500 to sandbox creations (a runner whose disk is full).
    failing: Arc<AtomicBool>,
    /// Keep heartbeating.
    beating: Arc<AtomicBool>,
}

impl FakeRunner {
    fn start(name: &'static str, token: &str) -> FakeRunner {
        let listener = TcpListener::bind("127.0.0.1:0").expect("runner port");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(RunnerMemory::default()));
        let (s, f, token) = (Arc::clone(&seen), Arc::clone(&failing), token.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, f, st, token) = (
                    Arc::clone(&s),
                    Arc::clone(&f),
                    Arc::clone(&state),
                    token.clone(),
                );
                std::thread::spawn(move || serve_one(conn, &s, &f, &st, &token));
            }
        });
        FakeRunner {
            name,
            port,
            seen,
            failing,
            beating: Arc::new(AtomicBool::new(false)),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Registers with the control plane; returns the answer.
    async fn register(&self, api: &Api) -> (u16, Value) {
        let body = json!({"name": self.name, "apiUrl": self.url(), "cpu": 2, "memoryMib": 2048, "diskGib": 10, "capacity": 5});
        api.call(
            "POST",
            "/api/runners/register",
            Some(&api.runner_token),
            Some(body),
        )
        .await
    }

    /// Heartbeats every 500 ms from its own thread until [`FakeRunner::silence`].
    fn heartbeat(&self, api: &Api) {
        self.beating.store(true, Ordering::SeqCst);
        let (beating, base, token, name) = (
            Arc::clone(&self.beating),
            api.base.clone(),
            api.runner_token.clone(),
            self.name,
        );
        std::thread::spawn(move || {
            block_on(async move {
                let c = reqwest::Client::new();
                while beating.load(Ordering::SeqCst) {
                    let _ = c
                        .post(format!("{base}/api/runners/{name}/heartbeat"))
                        .bearer_auth(&token)
                        .json(&json!({"sandboxes": 0}))
                        .send()
                        .await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        });
    }

    fn silence(&self) {
        self.beating.store(false, Ordering::SeqCst);
    }
}

impl Drop for FakeRunner {
    fn drop(&mut self) {
        self.silence();
    }
}

#[derive(Default)]
struct RunnerMemory {
    sandboxes: HashMap<String, String>,
    files: HashMap<(String, String), Vec<u8>>,
}

/// Reads one HTTP/1.1 request, answers it and closes the connection.
fn serve_one(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    failing: &AtomicBool,
    mem: &Mutex<RunnerMemory>,
    token: &str,
) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let auth = headers.get("authorization").cloned().unwrap_or_default();
    seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        target: target.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });
    let (status, ctype, out) = if auth != format!("Bearer {token}") {
        (
            401,
            "application/json",
            json!({"error": "not the runner token"})
                .to_string()
                .into_bytes(),
        )
    } else {
        answer(&method, &target, &body, failing, mem)
    };
    let mut conn = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        out.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&out);
}

/// The runner API of docs/platform.md, in memory.
fn answer(
    method: &str,
    target: &str,
    body: &[u8],
    failing: &AtomicBool,
    mem: &Mutex<RunnerMemory>,
) -> (u16, &'static str, Vec<u8>) {
    let js = |status: u16, v: Value| (status, "application/json", v.to_string().into_bytes());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let file_path = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .map(|p| p.replace("%2F", "/"))
        .unwrap_or_default();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut mem = mem.lock().expect("lock");
    match (method, segs.as_slice()) {
        ("POST", ["sandboxes"]) => {
            let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let id = req["id"].as_str().unwrap_or_default().to_string();
            let image = req["image"].as_str().unwrap_or_default().to_string();
            if failing.load(Ordering::SeqCst) {
                return js(500, json!({"error": "no space left on device"}));
            }
            if image.contains("missing") {
                return js(
                    404,
                    json!({"error": format!("image {image} is not in the registry")}),
                );
            }
            mem.sandboxes.insert(id.clone(), image.clone());
            js(
                201,
                json!({"id": id, "state": "started", "image": image, "digest": "sha256:00"}),
            )
        }
        ("POST", ["sandboxes", id, action @ ("start" | "stop")]) => {
            let state = if *action == "start" {
                "started"
            } else {
                "stopped"
            };
            js(200, json!({"id": id, "state": state}))
        }
        ("DELETE", ["sandboxes", id]) => {
            mem.sandboxes.remove(*id);
            (204, "application/json", Vec::new())
        }
        ("POST", ["sandboxes", id, "exec"]) => js(
            200,
            json!({"exitCode": 0, "result": format!("{id}\n"), "stderr": ""}),
        ),
        ("PUT", ["sandboxes", id, "files"]) => {
            mem.files
                .insert((id.to_string(), file_path.clone()), body.to_vec());
            js(200, json!({"path": file_path, "size": body.len()}))
        }
        ("GET", ["sandboxes", id, "files"]) => {
            match mem.files.get(&(id.to_string(), file_path.clone())) {
                Some(b) => (200, "application/octet-stream", b.clone()),
                None => js(404, json!({"error": format!("{file_path}: no such file")})),
            }
        }
        (_, ["sandboxes", id, "ports", port, rest @ ..]) => {
            let text = format!(
                "sandbox {id} port {port} {method} /{}{}",
                rest.join("/"),
                if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                }
            );
            (200, "text/plain", text.into_bytes())
        }
        _ => js(404, json!({"error": format!("no route {method} {path}")})),
    }
}

/// The control plane as a client sees it.
struct Api {
    base: String,
    admin_key: String,
    runner_token: String,
    http: reqwest::Client,
}

impl Api {
    /// `method path` with `Authorization: Bearer auth` and a JSON body; returns the status and
    /// the JSON answer (`null` when there is none).
    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("{}{path}", self.base),
        );
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API request");
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("API body");
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// An upload (with `upload`'s bytes) or a download, of `?path=` when given.
    fn file(
        &self,
        auth: &str,
        id: &str,
        path: Option<&str>,
        upload: Option<Vec<u8>>,
    ) -> reqwest::RequestBuilder {
        let (method, op) = match upload {
            Some(_) => (reqwest::Method::POST, "upload"),
            None => (reqwest::Method::GET, "download"),
        };
        let url = format!("{}/api/toolbox/{id}/toolbox/files/{op}", self.base);
        let mut req = self.http.request(method, url).bearer_auth(auth);
        if let Some(p) = path {
            req = req.query(&[("path", p)]);
        }
        if let Some(bytes) = upload {
            req = req.body(bytes);
        }
        req
    }

    /// `POST /api/sandbox` with `body`.
    async fn new_sandbox(&self, auth: &str, body: Value) -> (u16, Value) {
        self.call("POST", "/api/sandbox", Some(auth), Some(body))
            .await
    }

    /// A raw request (any header, any body); returns the status and the JSON answer.
    async fn raw(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("API request");
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("API body");
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// A 4xx with `{"error": "..."}`: what every bad request must get.
#[track_caller]
fn refused(answer: &(u16, Value), status: u16, what: &str) {
    assert_eq!(answer.0, status, "{what}: {answer:?}");
    let msg = answer.1["error"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{what}: no error message in {answer:?}");
}

/// [`refused`], with a message that names `says`.
#[track_caller]
fn refused_saying(answer: &(u16, Value), status: u16, what: &str, says: &str) {
    refused(answer, status, what);
    let msg = answer.1["error"].as_str().unwrap_or_default();
    assert!(msg.contains(says), "{what}: `{says}` not in {msg:?}");
}

/// An access token for `user` (password `password`) from dex's password grant.
pub(crate) async fn password_grant(issuer: &str, user: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", "password"),
            ("scope", "openid email profile"),
            ("client_id", "boxlite"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("token JSON");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// An RSA private key as PEM, converted by Node (the dex stand-in's runtime) from a JWK file,
/// or freshly generated when `jwk` is `None`.
fn rsa_pem(jwk: Option<&Path>) -> Vec<u8> {
    let script = "const c=require('crypto');const f=process.argv[1];\
        const k=f?c.createPrivateKey({key:JSON.parse(require('fs').readFileSync(f,'utf8')),format:'jwk'})\
        :c.generateKeyPairSync('rsa',{modulusLength:2048}).privateKey;\
        process.stdout.write(k.export({type:'pkcs1',format:'pem'}))";
    let mut cmd = std::process::Command::new("node");
    cmd.args(["-e", script]);
    if let Some(p) = jwk {
        cmd.arg(p);
    }
    let out = cmd.output().expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The seconds `key` has left in Redis.
fn redis_ttl(url: &str, key: &str) -> i64 {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    redis::cmd("TTL").arg(key).query(&mut c).expect("TTL")
}

fn sign(pem: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).expect("RSA key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Ports {
    api: u16,
    proxy: u16,
    caddy: u16,
}

/// The project: the default services on free ports, `api` and `proxy` from their files, built
/// in the repository (see `harness::default_platform`).
fn project() -> (Project, Ports) {
    let (p, ports) = crate::harness::default_platform("cp", &["api", "proxy"]);
    let ports = Ports {
        api: ports["api"],
        proxy: ports["proxy"],
        caddy: ports["caddy"],
    };
    (p, ports)
}

#[test]
fn the_control_plane_authenticates_schedules_forwards_and_audits() {
    let (p, ports) = project();
    let up = p.run_building(&["up"]);
    assert_eq!(up.code, 0, "{}", up.text());
    let status = p.status();
    for svc in ["api", "proxy"] {
        assert_eq!(status[svc]["state"], "running", "{svc}: {status:?}");
        assert_eq!(status[svc]["healthy"], true, "{svc}: {status:?}");
    }
    assert!(
        p.state_dir().join("logs/api.build.log").exists(),
        "the build step ran"
    );
    let env: BTreeMap<String, String> =
        serde_json::from_value(p.run_building(&["env", "--json"]).json()).expect("env object");
    assert_eq!(
        env["CONTROL_PLANE_URL"],
        format!("http://127.0.0.1:{}", ports.api)
    );
    let api = Api {
        base: env["CONTROL_PLANE_URL"].clone(),
        admin_key: env["ADMIN_API_KEY"].clone(),
        runner_token: env["RUNNER_TOKEN"].clone(),
        http: reqwest::Client::new(),
    };
    let dex_key = p.state_dir().join("data/dex/signing-key.json");
    block_on(scenario(&api, &env, &ports, &dex_key));
}

async fn scenario(api: &Api, env: &BTreeMap<String, String>, ports: &Ports, dex_key: &Path) {
    let mut db = sqlx::PgConnection::connect(&env["DATABASE_URL"])
        .await
        .expect("postgres");
    let audit_mark = audit_max(&mut db).await;

    // Health needs no credentials.
    let health = api.call("GET", "/api/health", None, None).await;
    assert_eq!(health, (200, json!({"status": "ok"})));

    authentication(api, env, dex_key).await;
    let user = password_grant(&env["OIDC_ISSUER"], "test01@boxlite.dev").await;
    let other = password_grant(&env["OIDC_ISSUER"], "admin@boxlite.dev").await;
    let admin = api.admin_key.as_str();

    // No runner yet: a clear 503, and nothing created.
    let none = api.new_sandbox(&user, json!({})).await;
    refused_saying(&none, 503, "no runner", "runner");

    // Registration takes the runner token only.
    let (a, b) = (
        FakeRunner::start("runner-a", &api.runner_token),
        FakeRunner::start("runner-b", &api.runner_token),
    );
    let reg = json!({"name": "runner-a", "apiUrl": a.url(), "cpu": 2, "memoryMib": 2048, "diskGib": 10, "capacity": 5});
    refused(
        &api.call("POST", "/api/runners/register", None, Some(reg.clone()))
            .await,
        401,
        "register without a token",
    );
    refused(
        &api.call(
            "POST",
            "/api/runners/register",
            Some(admin),
            Some(reg.clone()),
        )
        .await,
        401,
        "register with the admin key",
    );
    for r in [&a, &b] {
        let (code, body) = r.register(api).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["state"], "ready", "{body}");
        assert_eq!(body["apiUrl"], r.url());
        r.heartbeat(api);
    }
    let runners = api.call("GET", "/api/runners", Some(admin), None).await;
    assert_eq!(runners.0, 200, "{runners:?}");
    let id_of = |name: &str| {
        runners
            .1
            .as_array()
            .expect("runners")
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("{name} in {runners:?}"))
    };
    let (a_id, b_id) = (id_of("runner-a"), id_of("runner-b"));
    refused(
        &api.call("GET", "/api/runners", Some(&user), None).await,
        403,
        "runners as a user",
    );

    // Scheduling: the runner with the fewest sandboxes (ties by name).
    let s1 = create(api, &user, json!({"name": "one", "labels": {"team": "x"}})).await;
    assert_eq!(s1["runnerId"], a_id.as_str(), "{s1}");
    assert_eq!(s1["state"], "started");
    assert_eq!(s1["image"], "boxlite/base:bookworm");
    let s2 = create(
        api,
        &user,
        json!({"name": "two", "image": "demo/hello:v1", "cpu": 2}),
    )
    .await;
    assert_eq!(s2["runnerId"], b_id.as_str(), "{s2}");
    let s1_id = s1["id"].as_str().expect("id").to_string();
    let made = a
        .seen()
        .into_iter()
        .find(|s| s.method == "POST" && s.target == "/sandboxes")
        .expect("runner-a was asked to create");
    assert_eq!(made.auth, format!("Bearer {}", api.runner_token));
    let made: Value = serde_json::from_slice(&made.body).expect("create body");
    assert_eq!(made["id"], s1_id.as_str());
    assert_eq!(made["labels"], json!({"team": "x"}));
    assert_eq!(made["memoryMib"], 1024);

    // Organizations: the admin's sandbox is not test01's, nor the other user's.
    let s_admin = create(api, admin, json!({"name": "admins"})).await;
    let s_admin_id = s_admin["id"].as_str().expect("id");
    refused(
        &api.call(
            "GET",
            &format!("/api/sandbox/{s_admin_id}"),
            Some(&user),
            None,
        )
        .await,
        404,
        "another organization's sandbox",
    );
    refused(
        &api.call(
            "DELETE",
            &format!("/api/sandbox/{s1_id}"),
            Some(&other),
            None,
        )
        .await,
        404,
        "deleting another organization's sandbox",
    );
    let mine = api.call("GET", "/api/sandbox", Some(&user), None).await;
    let names: Vec<&str> = mine
        .1
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{mine:?}");
    assert!(
        names.contains(&"one") && names.contains(&"two"),
        "{names:?}"
    );
    assert_eq!(
        api.call("GET", "/api/sandbox", Some(&other), None).await.1,
        json!([])
    );
    let all = api.call("GET", "/api/sandbox", Some(admin), None).await;
    assert_eq!(
        all.1.as_array().map(Vec::len),
        Some(3),
        "the admin sees all: {all:?}"
    );
    refused(
        &api.new_sandbox(&user, json!({"name": "one"})).await,
        409,
        "a name in use",
    );

    toolbox(api, &user, &s1_id, &a).await;
    previews(api, &user, &s1_id, ports, &a, env).await;
    lifecycle(api, &user, &s1_id).await;
    bad_input(api, &user, &s1_id).await;

    // A runner that fails: the sandbox is `error`, the caller gets a 502 with its message. One
    // that refuses (no such image) leaves nothing behind.
    b.silence();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rs = api.call("GET", "/api/runners", Some(admin), None).await;
        let state =
            rs.1.as_array()
                .and_then(|l| l.iter().find(|r| r["name"] == "runner-b").cloned());
        if state.as_ref().is_some_and(|r| r["state"] == "unresponsive") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "runner-b never became unresponsive: {rs:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s3 = create(api, &user, json!({"name": "three"})).await;
    assert_eq!(s3["runnerId"], a_id.as_str(), "runner-b is silent: {s3}");
    a.failing.store(true, Ordering::SeqCst);
    let failed = api.new_sandbox(&user, json!({"name": "four"})).await;
    refused_saying(&failed, 502, "a failing runner", "no space left on device");
    let four = api.call("GET", "/api/sandbox", Some(&user), None).await;
    let four = four
        .1
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["name"] == "four")
        .cloned()
        .expect("four is kept");
    assert_eq!(four["state"], "error");
    a.failing.store(false, Ordering::SeqCst);
    let missing = api
        .new_sandbox(&user, json!({"name": "five", "image": "missing/image:1"}))
        .await;
    refused_saying(
        &missing,
        404,
        "an image not in the registry",
        "missing/image:1",
    );
    let n: i64 = sqlx::query("SELECT count(*) FROM sandboxes WHERE name = 'five'")
        .fetch_one(&mut db)
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing half-created");

    // Delete: gone from the runner and from the API.
    let del = api
        .call(
            "DELETE",
            &format!("/api/sandbox/{s1_id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(del.0, 200, "{del:?}");
    assert_eq!(del.1["state"], "destroyed");
    assert!(a
        .seen()
        .iter()
        .any(|s| s.method == "DELETE" && s.target == format!("/sandboxes/{s1_id}")));
    refused(
        &api.call("GET", &format!("/api/sandbox/{s1_id}"), Some(&user), None)
            .await,
        404,
        "a deleted sandbox",
    );

    audit(&mut db, audit_mark, &s1_id).await;
}

async fn create(api: &Api, auth: &str, body: Value) -> Value {
    let (code, v) = api.new_sandbox(auth, body).await;
    assert_eq!(code, 201, "{v}");
    v
}

/// Missing, malformed, foreign, forged and expired credentials are 401; the admin key and a
/// dex access token work.
async fn authentication(api: &Api, env: &BTreeMap<String, String>, dex_key: &Path) {
    let issuer = env["OIDC_ISSUER"].as_str();
    let token = password_grant(issuer, "test01@boxlite.dev").await;
    // Forged: dex's header and claims with another signature.
    let (head_claims, _) = token.rsplit_once('.').expect("a JWT");
    let forged = format!("{head_claims}.{}", "A".repeat(342));
    // Foreign: a well-formed token from another issuer's key, and one that claims our issuer
    // but is signed by a key dex does not publish.
    let claims = |iss: &str, exp: u64, aud: &str| json!({"iss": iss, "aud": aud, "sub": "CgQ1Njc4EgVsb2NhbA", "exp": exp, "iat": now()});
    let foreign_key = rsa_pem(None);
    let foreign = sign(
        &foreign_key,
        "k1",
        &claims("http://evil.example/dex", now() + 600, "boxlite"),
    );
    let unknown_key = sign(&foreign_key, "k1", &claims(issuer, now() + 600, "boxlite"));
    // Expired: signed with dex's own key (read from its data dir, as only a test can), so only
    // `exp` is wrong (the same claims unexpired pass); and one meant for another client.
    let pem = rsa_pem(Some(dex_key));
    let jwk: Value =
        serde_json::from_slice(&std::fs::read(dex_key).expect("dex key")).expect("JWK");
    let kid = jwk["kid"].as_str().expect("kid");
    let fresh = sign(&pem, kid, &claims(issuer, now() + 600, "boxlite"));
    let expired = sign(&pem, kid, &claims(issuer, now() - 120, "boxlite"));
    let other_aud = sign(&pem, kid, &claims(issuer, now() + 600, "someone-else"));
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let cases: Vec<(Option<String>, u16, &str, &str)> = vec![
        (None, 401, "no credentials", ""),
        (Some("Basic YTpi".into()), 401, "not a bearer token", ""),
        (bearer(""), 401, "an empty bearer token", ""),
        (bearer("not-a-key"), 401, "an unknown API key", ""),
        (bearer("a.b.c"), 401, "a malformed JWT", ""),
        (bearer(&token), 200, "a dex access token", ""),
        (bearer(&api.admin_key), 200, "the admin key", ""),
        (bearer(&forged), 401, "a forged signature", "signature"),
        (
            bearer(&foreign),
            401,
            "another issuer's token",
            "evil.example",
        ),
        (
            bearer(&unknown_key),
            401,
            "a key dex does not publish",
            "does not publish",
        ),
        (bearer(&fresh), 200, "dex's key, not expired", ""),
        (bearer(&expired), 401, "an expired token", "expired"),
        (bearer(&other_aud), 401, "another audience", "`aud`"),
    ];
    for (auth, status, what, says) in cases {
        let mut req = api.http.get(format!("{}/api/sandbox", api.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let answer = api.raw(req).await;
        if status == 200 {
            assert_eq!(answer.0, 200, "{what}: {answer:?}");
        } else {
            refused_saying(&answer, status, what, says);
        }
    }
}

/// Exec and files go to the sandbox's runner; paths leaving the root never do.
async fn toolbox(api: &Api, user: &str, id: &str, runner: &FakeRunner) {
    let exec = api
        .call(
            "POST",
            &format!("/api/toolbox/{id}/toolbox/process/execute"),
            Some(user),
            Some(json!({"command": "uname -n", "cwd": "/tmp", "timeout": 10})),
        )
        .await;
    assert_eq!(
        exec,
        (
            200,
            json!({"exitCode": 0, "result": format!("{id}\n"), "stderr": ""})
        )
    );
    let file = |path: Option<&str>, upload: Option<Vec<u8>>| api.file(user, id, path, upload);
    let up = api
        .raw(file(
            Some("/home/user/hello.txt"),
            Some(b"hello sandbox".to_vec()),
        ))
        .await;
    assert_eq!(
        up,
        (200, json!({"path": "/home/user/hello.txt", "size": 13}))
    );
    let down = file(Some("/home/user/hello.txt"), None)
        .send()
        .await
        .expect("download");
    assert_eq!(down.status().as_u16(), 200);
    assert_eq!(
        down.bytes().await.expect("bytes").as_ref(),
        b"hello sandbox"
    );
    let before = runner.seen().len();
    for bad in ["/../etc/passwd", "relative/file", "/a/./b", "/a//b", ""] {
        let r = api.raw(file(Some(bad), Some(b"x".to_vec()))).await;
        refused(&r, 400, &format!("upload to {bad:?}"));
        let r = api.raw(file(Some(bad), None)).await;
        refused(&r, 400, &format!("download of {bad:?}"));
    }
    assert_eq!(
        runner.seen().len(),
        before,
        "no bad path reached the runner"
    );
    let absent = api.raw(file(Some("/nope"), None)).await;
    refused(&absent, 404, "a file the runner does not have");
    refused(
        &api.raw(file(None, Some(b"x".to_vec()))).await,
        400,
        "an upload without ?path=",
    );
    // A file larger than the limit is refused before it reaches the runner.
    let huge = api
        .raw(file(Some("/big"), Some(vec![0u8; (64 << 20) + 1])))
        .await;
    refused(&huge, 413, "a file over 64 MiB");
}

/// A signed preview URL is a token in Redis with a TTL; the proxy forwards through it, with
/// the runner token, and refuses unknown tokens and other ports.
async fn previews(
    api: &Api,
    user: &str,
    id: &str,
    ports: &Ports,
    runner: &FakeRunner,
    env: &BTreeMap<String, String>,
) {
    let sign_url = || {
        let path = format!("/api/sandbox/{id}/ports/8080/signed-preview-url");
        async move { api.call("GET", &path, Some(user), None).await }
    };
    let signed = sign_url().await;
    assert_eq!(signed.0, 200, "{signed:?}");
    let token = signed.1["token"].as_str().expect("token").to_string();
    assert_eq!(
        signed.1["url"],
        format!("http://8080-{token}.localhost:{}/", ports.caddy)
    );
    assert!(
        signed.1["expiresAt"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{signed:?}"
    );
    let ttl = redis_ttl(&env["REDIS_URL"], &format!("preview:{token}"));
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");
    let alive = redis_ttl(&env["REDIS_URL"], "runner:runner-a:alive");
    assert!((1..=6).contains(&alive), "a heartbeat's TTL {alive}");

    // Through Caddy's preview-host route, as a browser opens the URL.
    let via_caddy = |host: String, path: &'static str| {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", ports.caddy))
            .header("host", host)
            .send()
    };
    let resp = via_caddy(format!("8080-{token}.localhost"), "/app/page?x=1")
        .await
        .expect("caddy");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.text().await.expect("text"),
        format!("sandbox {id} port 8080 GET /app/page?x=1")
    );
    let fwd = runner
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.target.contains("/ports/8080/"))
        .expect("the proxy forwarded");
    assert_eq!(
        fwd.target,
        format!("/sandboxes/{id}/ports/8080/app/page?x=1")
    );
    assert_eq!(fwd.auth, format!("Bearer {}", api.runner_token));
    // An expired token: a second URL whose key Redis lets expire now (as it would after the TTL).
    let second = sign_url().await;
    let expired = second.1["token"].as_str().expect("token").to_string();
    let key = format!("preview:{expired}");
    let mut rd = redis::Client::open(env["REDIS_URL"].as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(1)
        .query(&mut rd)
        .expect("PEXPIRE");
    assert!(
        crate::harness::wait_until(Duration::from_secs(5), || redis_ttl(
            &env["REDIS_URL"],
            &key
        ) == -2),
        "the token expired"
    );
    let before = runner.seen().len();
    for host in [
        format!("8080-{}.localhost", "0".repeat(32)),
        format!("9090-{token}.localhost"),
        format!("8080-{expired}.localhost"),
    ] {
        let resp = via_caddy(host.clone(), "/").await.expect("caddy");
        assert_eq!(resp.status().as_u16(), 404, "{host}");
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(v["error"].as_str().is_some(), "{host}: {v}");
    }
    assert_eq!(
        runner.seen().len(),
        before,
        "nothing forwarded for an unknown, expired or other port's token"
    );
    // Straight to the proxy without Caddy's headers.
    let direct = reqwest::get(format!("http://127.0.0.1:{}/", ports.proxy))
        .await
        .expect("proxy");
    assert_eq!(direct.status().as_u16(), 400);
    refused(
        &api.call(
            "GET",
            &format!("/api/sandbox/{id}/ports/0/signed-preview-url"),
            Some(user),
            None,
        )
        .await,
        400,
        "port 0",
    );
    refused(
        &api.call(
            "GET",
            &format!("/api/sandbox/{id}/ports/70000/signed-preview-url"),
            Some(user),
            None,
        )
        .await,
        400,
        "port 70000",
    );
}

async fn lifecycle(api: &Api, user: &str, id: &str) {
    let stop = api
        .call("POST", &format!("/api/sandbox/{id}/stop"), Some(user), None)
        .await;
    assert_eq!(
        (stop.0, &stop.1["state"]),
        (200, &json!("stopped")),
        "{stop:?}"
    );
    let exec = api
        .call(
            "POST",
            &format!("/api/toolbox/{id}/toolbox/process/execute"),
            Some(user),
            Some(json!({"command": "true"})),
        )
        .await;
    refused(&exec, 409, "exec in a stopped sandbox");
    let start = api
        .call(
            "POST",
            &format!("/api/sandbox/{id}/start"),
            Some(user),
            None,
        )
        .await;
    assert_eq!(
        (start.0, &start.1["state"]),
        (200, &json!("started")),
        "{start:?}"
    );
}

/// Every endpoint refuses bad input with a 4xx and a message.
async fn bad_input(api: &Api, user: &str, id: &str) {
    let bad_id = "not-a-uuid";
    let nobody = "0b9d6a2e-8f3c-4c1e-9a57-3f0e2b7c1d4a";
    let exec_path = format!("/api/toolbox/{id}/toolbox/process/execute");
    let check = |method: &'static str, path: String, body: Value, status: u16| async move {
        let body = (!body.is_null()).then_some(body);
        let r = api.call(method, &path, Some(user), body.clone()).await;
        refused(&r, status, &format!("{method} {path} {body:?}"));
    };
    // Creations: unknown fields and wrong types (422), values out of range (400).
    for (body, status) in [
        (json!({"name": "x", "color": "red"}), 422),
        (json!({"name": 42}), 422),
        (json!({"cpu": "two"}), 422),
        (json!({"cpu": 0}), 400),
        (json!({"cpu": -1}), 422),
        (json!({"memoryMib": 1}), 400),
        (json!({"name": "../etc"}), 400),
        (json!({"env": {"1BAD": "x"}}), 400),
        (json!({"image": ""}), 400),
        (json!([1, 2]), 422),
        (json!({"labels": {"a": "nul\u{0}byte"}}), 400),
        (json!({"env": {"A": "nul\u{0}byte"}}), 400),
    ] {
        check("POST", "/api/sandbox".into(), body, status).await;
    }
    // Commands.
    for (body, status) in [
        (json!({"command": "ls", "shell": "bash"}), 422),
        (json!({"command": ["ls"]}), 422),
        (json!({"command": ""}), 400),
        (json!({"command": "ls", "cwd": "tmp"}), 400),
        (json!({"command": "ls", "timeout": 0}), 400),
        (json!({"command": "ls", "timeout": 99999}), 400),
        (json!({"command": "ls", "env": {"A=B": "c"}}), 400),
    ] {
        check("POST", exec_path.clone(), body, status).await;
    }
    // Ids, ports, paths and methods.
    for (method, path, status) in [
        ("GET", format!("/api/sandbox/{bad_id}"), 400),
        ("GET", format!("/api/sandbox/{nobody}"), 404),
        ("DELETE", format!("/api/sandbox/{bad_id}"), 400),
        ("POST", format!("/api/sandbox/{bad_id}/start"), 400),
        ("POST", format!("/api/sandbox/{nobody}/stop"), 404),
        (
            "GET",
            format!("/api/sandbox/{bad_id}/ports/80/signed-preview-url"),
            400,
        ),
        (
            "GET",
            format!("/api/sandbox/{id}/ports/http/signed-preview-url"),
            400,
        ),
        (
            "POST",
            format!("/api/toolbox/{bad_id}/toolbox/process/execute"),
            400,
        ),
        ("GET", "/api/nothing-here".into(), 404),
        ("PUT", "/api/sandbox".into(), 405),
    ] {
        let body = if method == "POST" && path.contains("execute") {
            json!({"command": "ls"})
        } else {
            Value::Null
        };
        check(method, path, body, status).await;
    }
    // Not JSON, the wrong content type, and a body over the limit.
    let typed = |ctype: &str, body: &'static str| {
        api.http
            .post(format!("{}/api/sandbox", api.base))
            .bearer_auth(user)
            .header("content-type", ctype)
            .body(body)
    };
    let not_json = api.raw(typed("application/json", "{not json")).await;
    refused(&not_json, 400, "a body that is not JSON");
    let text = api.raw(typed("text/plain", "{}")).await;
    refused(&text, 415, "a body that is not declared JSON");
    let huge = json!({"command": "x".repeat(2 << 20)});
    refused(
        &api.call("POST", &exec_path, Some(user), Some(huge)).await,
        413,
        "a JSON body over 1 MiB",
    );
    // Runner endpoints: the runner token, then their own checks.
    let rt = api.runner_token.as_str();
    let reg = |change: Value| {
        let mut body = json!({"name": "r", "apiUrl": "http://127.0.0.1:1", "cpu": 1, "memoryMib": 1, "diskGib": 1, "capacity": 1});
        if let (Some(b), Some(c)) = (body.as_object_mut(), change.as_object()) {
            b.extend(c.clone());
        }
        body
    };
    let beat = |name: &str| format!("/api/runners/{name}/heartbeat");
    for (path, body, status) in [
        (
            "/api/runners/register".to_string(),
            reg(json!({"zone": "x"})),
            422,
        ),
        (
            "/api/runners/register".to_string(),
            reg(json!({"apiUrl": "ftp://x"})),
            400,
        ),
        (
            "/api/runners/register".to_string(),
            reg(json!({"cpu": 0})),
            400,
        ),
        (
            "/api/runners/register".to_string(),
            reg(json!({"name": "bad name"})),
            400,
        ),
        (
            "/api/runners/register".to_string(),
            json!({"name": "r"}),
            422,
        ),
        (beat("nobody"), json!({"sandboxes": 0}), 404),
        (beat("bad%20name"), json!({"sandboxes": 0}), 400),
        (beat("runner-a"), json!({"sandboxes": -1}), 422),
        (beat("runner-a"), json!({"sandboxes": 1, "cpu": 3}), 422),
    ] {
        let r = api.call("POST", &path, Some(rt), Some(body.clone())).await;
        refused(&r, status, &format!("POST {path} {body}"));
    }
    refused(
        &api.call(
            "POST",
            "/api/runners/runner-a/heartbeat",
            Some(user),
            Some(json!({"sandboxes": 0})),
        )
        .await,
        401,
        "a heartbeat with a user's token",
    );
}

async fn audit_max(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("SELECT coalesce(max(id), 0) FROM audit_log")
        .fetch_one(db)
        .await
        .expect("audit")
        .get(0)
}

/// One row per mutating call, failed ones included, and none for reads or heartbeats.
async fn audit(db: &mut sqlx::PgConnection, mark: i64, s1: &str) {
    let rows = sqlx::query(
        "SELECT action, status_code, coalesce(actor_id, ''), coalesce(target_id, '') FROM audit_log WHERE id > $1 ORDER BY id",
    )
    .bind(mark)
    .fetch_all(db)
    .await
    .expect("audit rows");
    let rows: Vec<(String, i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let count = |action: &str, status: i32| {
        rows.iter()
            .filter(|r| r.0 == action && r.1 == status)
            .count()
    };
    // Registrations: two refused (no token, admin key), two accepted, five with bad bodies.
    assert_eq!(count("runner.register", 401), 2, "{rows:#?}");
    assert_eq!(count("runner.register", 200), 2, "{rows:#?}");
    // Creations: the 503 without runners, one, two, the admin's, three, the 409, the 502, the
    // 404 of the missing image, and the bad bodies of `bad_input`.
    for (status, n) in [(201, 4), (503, 1), (409, 1), (502, 1), (404, 1)] {
        assert_eq!(
            count("sandbox.create", status),
            n,
            "create {status}: {rows:#?}"
        );
    }
    assert_eq!(count("sandbox.stop", 200), 1);
    assert_eq!(count("sandbox.start", 200), 1);
    assert_eq!(count("toolbox.execute", 200), 1);
    assert_eq!(count("toolbox.execute", 409), 1);
    assert_eq!(count("toolbox.upload", 200), 1);
    assert_eq!(
        count("sandbox.delete", 404),
        1,
        "another organization's delete"
    );
    let deleted = rows
        .iter()
        .find(|r| r.0 == "sandbox.delete" && r.1 == 200)
        .expect("the delete");
    assert_eq!(deleted.2, "CgQ1Njc4EgVsb2NhbA", "test01's subject");
    assert_eq!(deleted.3, s1);
    let created = rows
        .iter()
        .find(|r| r.0 == "sandbox.create" && r.1 == 201)
        .expect("a creation");
    assert!(!created.3.is_empty(), "the new sandbox's id is the target");
    assert!(
        rows.iter().all(|r| !r.0.contains("heartbeat")),
        "heartbeats are not audited"
    );
}
