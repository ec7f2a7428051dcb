//! The whole default stack (PostgreSQL, Redis, Garage as S3, the Dex-format OIDC provider, the
//! OCI registry, Caddy) on free ports, driven by real clients: sqlx, redis-rs, aws-sdk-s3, an
//! OIDC password grant verified against the JWKS, an image push over the registry's HTTP API,
//! and every Caddy route. Then SIGKILL of each server, and `down`/`up`: all data still there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

use crate::harness::{block_on, free_port, listening, wait_until, Project};

const PROGRAMS: &[&str] = &["garage", "caddy", "docker-registry", "node", "redis-server"];

/// The platform test needs every server installed; say exactly what is missing otherwise.
fn missing_programs() -> Vec<&'static str> {
    PROGRAMS
        .iter()
        .copied()
        .filter(|p| which::which(p).is_err())
        .collect()
}

struct Platform {
    p: Project,
    env: BTreeMap<String, String>,
    ports: BTreeMap<&'static str, u16>,
    preview_headers: Arc<Mutex<Vec<String>>>,
}

fn platform() -> Platform {
    let missing = missing_programs();
    assert!(
        missing.is_empty(),
        "run scripts/install-deps.sh first; missing: {missing:?}"
    );
    let (p, mut ports) = crate::harness::default_infrastructure("platform");
    // Bound at once, not picked free then bound: another test may take a port in between.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a preview port");
    ports.insert("preview", listener.local_addr().expect("its port").port());
    // The default services' shared values (stack.env, copied with them), plus the preview port.
    let shared = std::fs::read_to_string(p.dir.join("stack.env")).expect("stack.env");
    p.write(
        "stack.yaml",
        "name: platform\nbackend: process\nenv_file: stack.env\n",
    )
    .write(
        "stack.env",
        &format!("{shared}PREVIEW_PROXY_PORT={}\n", ports["preview"]),
    );
    // A stand-in for the control plane's preview proxy: records the headers Caddy forwards.
    let preview_headers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&preview_headers);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = conn.read(&mut buf).unwrap_or(0);
            seen.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\npreview",
            );
        }
    });
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let env = serde_json::from_value(p.run(&["env", "--json"]).json()).expect("env object");
    Platform {
        p,
        env,
        ports,
        preview_headers,
    }
}

pub(crate) fn s3(env: &BTreeMap<String, String>) -> aws_sdk_s3::Client {
    stack::s3::client(
        &env["S3_ENDPOINT"],
        &env["AWS_REGION"],
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
    )
}

async fn password_grant(
    env: &BTreeMap<String, String>,
    user: &str,
    password: &str,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/token", env["OIDC_ISSUER"]))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
            ("scope", "openid email profile"),
            ("client_id", env["OIDC_CLIENT_ID"].as_str()),
        ])
        .send()
        .await
        .expect("token request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// The authorization-code flow as a browser runs it (login form, cookies, redirects, no
/// redirect followed by the client itself); returns the token response.
async fn code_flow(
    env: &BTreeMap<String, String>,
    login: &str,
    password: &str,
    nonce: &str,
) -> serde_json::Value {
    let issuer = reqwest::Url::parse(&env["OIDC_ISSUER"]).expect("issuer URL");
    let redirect_uri = "http://127.0.0.1:5555/callback";
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut cookies: Vec<String> = Vec::new();
    // One step: the response's cookies are kept, its Location resolved against the issuer.
    let mut step = |resp: reqwest::Response| {
        assert!(resp.status().is_redirection(), "{resp:?}");
        for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let pair = c.to_str().expect("cookie").split(';').next().unwrap_or("");
            cookies.push(pair.to_string());
        }
        let location = resp.headers()[reqwest::header::LOCATION]
            .to_str()
            .expect("location");
        (
            issuer.join(location).expect("location URL"),
            cookies.join("; "),
        )
    };
    let mut auth = issuer.clone();
    auth.path_segments_mut().expect("path").push("auth");
    auth.query_pairs_mut()
        .append_pair("client_id", &env["OIDC_CLIENT_ID"])
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", "s1")
        .append_pair("nonce", nonce);
    let (form, cookie) = step(browser.get(auth).send().await.expect("auth"));
    let (resume, cookie) = step(
        browser
            .post(format!("{form}/login"))
            .header(reqwest::header::COOKIE, cookie)
            .form(&[("login", login), ("password", password)])
            .send()
            .await
            .expect("login"),
    );
    let (callback, _) = step(
        browser
            .get(resume)
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await
            .expect("resume"),
    );
    assert!(callback.as_str().starts_with(redirect_uri), "{callback}");
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("a code in {callback}"));
    let resp = browser
        .post(format!("{}/token", env["OIDC_ISSUER"]))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("client_id", env["OIDC_CLIENT_ID"].as_str()),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("token JSON")
}

/// Checks an RS256 JWT from the provider (ID or access token) against its JWKS: signature,
/// `iss`, `aud` = the client, `exp`. Returns its claims, or why it does not verify.
async fn verify(
    env: &BTreeMap<String, String>,
    token: &str,
) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
    let issuer = &env["OIDC_ISSUER"];
    let discovery: serde_json::Value =
        reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
            .await
            .expect("discovery")
            .json()
            .await
            .expect("discovery JSON");
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::get(discovery["jwks_uri"].as_str().expect("jwks_uri"))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("jwks JSON");
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the signing key is in the JWKS");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[env["OIDC_CLIENT_ID"].as_str()]);
    v.set_issuer(&[issuer.as_str()]);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("RSA key");
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map(|t| t.claims)
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let c = reqwest::Client::new();
    let start = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(start.status().as_u16(), 202);
    let loc = start.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let digest = sha256(data);
    let put = c
        .put(format!("{loc}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("put blob");
    assert_eq!(put.status().as_u16(), 201, "{:?}", put.text().await);
    digest
}

/// Pushes a one-layer OCI image; returns its manifest digest.
async fn push_image(base: &str) -> String {
    let layer = b"not really a tarball, the registry does not care".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer_digest = push_blob(base, "demo/hello", &layer).await;
    let config_digest = push_blob(base, "demo/hello", &config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
    });
    let body = serde_json::to_vec(&manifest).expect("manifest");
    let put = reqwest::Client::new()
        .put(format!("{base}/v2/demo/hello/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(put.status().as_u16(), 201, "{:?}", put.text().await);
    sha256(&body)
}

async fn pull_manifest_digest(base: &str) -> String {
    let got = reqwest::Client::new()
        .get(format!("{base}/v2/demo/hello/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get manifest");
    assert_eq!(got.status().as_u16(), 200);
    sha256(&got.bytes().await.expect("body"))
}

async fn caddy_get(port: u16, path: &str, host: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = req.send().await.expect("caddy request");
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

/// Writes one piece of data into every server; `check_data` reads it back.
async fn write_data(env: &BTreeMap<String, String>) -> (String, String) {
    let mut pg = sqlx::PgConnection::connect(&env["DATABASE_URL"])
        .await
        .expect("postgres");
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
        .execute(&mut pg)
        .await
        .expect("create");
    sqlx::query("INSERT INTO notes VALUES (1, 'kept') ON CONFLICT DO NOTHING")
        .execute(&mut pg)
        .await
        .expect("insert");
    let mut rd = redis::Client::open(env["REDIS_URL"].as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async::<()>(&mut rd)
        .await
        .expect("set");
    s3(env)
        .put_object()
        .bucket("boxlite")
        .key("dir/hello.txt")
        .body(ByteStream::from_static(b"hello s3"))
        .send()
        .await
        .expect("put object");
    let digest = push_image(&env["REGISTRY_URL"]).await;
    let (code, token) = password_grant(env, "admin@boxlite.dev", "password").await;
    assert_eq!(code, 200, "{token}");
    (
        digest,
        token["access_token"]
            .as_str()
            .expect("access token")
            .to_string(),
    )
}

async fn check_data(env: &BTreeMap<String, String>, image: &str, access_token: &str) {
    let mut pg = sqlx::PgConnection::connect(&env["DATABASE_URL"])
        .await
        .expect("postgres");
    let row = sqlx::query("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&mut pg)
        .await
        .expect("row");
    assert_eq!(row.get::<String, _>(0), "kept");
    let mut rd = redis::Client::open(env["REDIS_URL"].as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let v: String = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut rd)
        .await
        .expect("get");
    assert_eq!(v, "hello");
    let obj = s3(env)
        .get_object()
        .bucket("boxlite")
        .key("dir/hello.txt")
        .send()
        .await
        .expect("get object");
    assert_eq!(
        obj.body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .as_ref(),
        b"hello s3"
    );
    assert_eq!(pull_manifest_digest(&env["REGISTRY_URL"]).await, image);
    // Tokens issued before the restart still work: keys and grants persist in dex's data dir.
    let issuer = &env["OIDC_ISSUER"];
    let discovery: serde_json::Value =
        reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
            .await
            .expect("d")
            .json()
            .await
            .expect("j");
    let me = reqwest::Client::new()
        .get(discovery["userinfo_endpoint"].as_str().expect("userinfo"))
        .bearer_auth(access_token)
        .send()
        .await
        .expect("userinfo");
    assert_eq!(me.status().as_u16(), 200);
}

#[test]
fn the_default_stack_serves_real_clients_and_keeps_data_across_kills_and_restarts() {
    let Platform {
        p,
        env,
        ports,
        preview_headers,
    } = platform();
    for k in [
        "DATABASE_URL",
        "REDIS_URL",
        "S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "S3_BUCKET",
        "OIDC_ISSUER",
        "OIDC_CLIENT_ID",
        "REGISTRY_URL",
        "PROXY_URL",
    ] {
        assert!(env.contains_key(k), "stack env exports {k}: {env:?}");
    }
    assert_eq!(
        env["OIDC_ISSUER"],
        format!("http://localhost:{}/dex", ports["dex"])
    );
    let st = p.status();
    for (svc, program) in [
        ("minio", "garage 2.5.0"),
        ("dex", "oidc-provider 9.13.3"),
        ("caddy", "caddy 2."),
    ] {
        let shown = st[svc]["program"].as_str().unwrap_or("");
        assert!(
            shown.starts_with(program),
            "status shows {program} for {svc}: {shown}"
        );
    }
    for (name, s) in &st {
        assert_eq!(s["healthy"], true, "{name}: {s}");
    }

    block_on(async {
        // S3: buckets from the bootstrap, put/get/list, multipart, and a wrong key refused.
        let c = s3(&env);
        let buckets: Vec<String> = c
            .list_buckets()
            .send()
            .await
            .expect("list")
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(String::from))
            .collect();
        assert!(
            buckets.contains(&"boxlite".to_string()) && buckets.contains(&"backups".to_string()),
            "{buckets:?}"
        );
        let part = vec![7u8; 5 * 1024 * 1024];
        let up = c
            .create_multipart_upload()
            .bucket("backups")
            .key("big.bin")
            .send()
            .await
            .expect("create multipart");
        let id = up.upload_id().expect("upload id");
        let mut parts = Vec::new();
        for n in 1..=2 {
            let r = c
                .upload_part()
                .bucket("backups")
                .key("big.bin")
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .expect("part");
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(r.e_tag().unwrap_or_default())
                    .build(),
            );
        }
        c.complete_multipart_upload()
            .bucket("backups")
            .key("big.bin")
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .expect("complete multipart");
        let big = c
            .get_object()
            .bucket("backups")
            .key("big.bin")
            .send()
            .await
            .expect("get big");
        assert_eq!(
            big.body.collect().await.expect("body").into_bytes().len(),
            10 * 1024 * 1024
        );
        let listed = c
            .list_objects_v2()
            .bucket("backups")
            .send()
            .await
            .expect("list objects");
        assert_eq!(listed.contents().len(), 1);
        let wrong = stack::s3::list_buckets(
            &env["S3_ENDPOINT"],
            "us-east-1",
            &env["AWS_ACCESS_KEY_ID"],
            "0".repeat(64).as_str(),
        )
        .await;
        assert!(wrong.is_err(), "a wrong secret key is refused");

        // OIDC: the password grant for both users, ID and access tokens verified against the
        // JWKS. Access tokens are JWTs as Dex issues them, so an API needs nothing but the JWKS.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut access_tokens = Vec::new();
        for (user, name, sub) in [
            ("admin@boxlite.dev", "admin", "CgQxMjM0EgVsb2NhbA"),
            ("test01@boxlite.dev", "test01", "CgQ1Njc4EgVsb2NhbA"),
        ] {
            let (code, body) = password_grant(&env, user, "password").await;
            assert_eq!(code, 200, "{user}: {body}");
            let id = verify(&env, body["id_token"].as_str().expect("id_token"))
                .await
                .expect("the ID token verifies against the JWKS");
            assert_eq!(id["sub"], sub, "Dex-compatible subject");
            assert_eq!(id["email"], user);
            let access = body["access_token"].as_str().expect("access_token");
            let at = verify(&env, access)
                .await
                .unwrap_or_else(|e| panic!("the access token verifies against the JWKS: {e}"));
            assert_eq!(at["iss"], env["OIDC_ISSUER"]);
            assert_eq!(at["aud"], env["OIDC_CLIENT_ID"]);
            assert_eq!(
                at["sub"], id["sub"],
                "the access token names the ID token's subject"
            );
            let exp = at["exp"].as_u64().expect("exp");
            assert!(exp > now, "exp {exp} is in the future (now {now})");
            assert!(at["iat"].as_u64().expect("iat") <= now + 60, "{at}");
            assert_eq!(
                (&at["email"], &at["email_verified"], &at["name"]),
                (
                    &id["email"],
                    &id["email_verified"],
                    &serde_json::json!(name)
                ),
                "the scope claims, as in the ID token"
            );
            access_tokens.push(access.to_string());
        }
        // The code flow (a browser app's login) gives a JWT access token too, with its nonce.
        let body = code_flow(&env, "test01", "password", "n-0S6_WzA2Mj").await;
        let id = verify(&env, body["id_token"].as_str().expect("id_token"))
            .await
            .expect("the ID token verifies against the JWKS");
        let at = verify(&env, body["access_token"].as_str().expect("access_token"))
            .await
            .unwrap_or_else(|e| panic!("the access token verifies against the JWKS: {e}"));
        assert_eq!(
            (&at["sub"], &at["nonce"], &at["email"]),
            (&id["sub"], &id["nonce"], &id["email"])
        );
        assert_eq!(at["nonce"], "n-0S6_WzA2Mj");
        // admin's header and signature over test01's claims: a forged token, refused.
        let part = |t: &str, i: usize| t.split('.').nth(i).expect("three parts").to_string();
        let (admin, test01) = (&access_tokens[0], &access_tokens[1]);
        let forged = format!("{}.{}.{}", part(admin, 0), part(test01, 1), part(admin, 2));
        let err = verify(&env, &forged)
            .await
            .expect_err("a forged token is refused");
        assert!(
            matches!(
                err.kind(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature
            ),
            "{err}"
        );
        let (code, body) = password_grant(&env, "admin@boxlite.dev", "wrong").await;
        assert!(
            code == 400 || code == 401,
            "wrong password refused: {code} {body}"
        );
        assert!(body.get("access_token").is_none());
        let (code, _) = password_grant(&env, "nobody@boxlite.dev", "password").await;
        assert!(code == 400 || code == 401, "unknown user refused: {code}");

        // Caddy: every route, and the preview host pattern forwarding port and token.
        let caddy = ports["caddy"];
        assert_eq!(caddy_get(caddy, "/healthz", None).await.0, 200);
        let (code, body) = caddy_get(caddy, "/dex/.well-known/openid-configuration", None).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(caddy_get(caddy, "/registry/v2/", None).await.0, 200);
        let (code, body) = caddy_get(caddy, "/minio/", None).await;
        assert!(
            body.contains("<Error>") || code == 200 || code == 403,
            "S3 answers through /minio: {code} {body}"
        );
        assert_eq!(
            caddy_get(caddy, "/api/anything", None).await.0,
            502,
            "no control plane yet"
        );
        let (code, body) = caddy_get(caddy, "/some/path", Some("42-abc123.localhost")).await;
        assert_eq!((code, body.as_str()), (200, "preview"));
        let seen = preview_headers
            .lock()
            .expect("lock")
            .join("\n")
            .to_ascii_lowercase();
        assert!(
            seen.contains("x-preview-port: 42") && seen.contains("x-preview-token: abc123"),
            "{seen}"
        );
        assert_eq!(caddy_get(caddy, "/nope", None).await.0, 404);
    });

    // Every server listens on loopback only.
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("tcp")
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    for (name, port) in ports.iter().filter(|(n, _)| **n != "preview") {
        let hex = format!(":{port:04X}");
        for l in tcp.lines().filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&hex) && f[3] == "0A"
        }) {
            let addr = l.split_whitespace().nth(1).unwrap_or("");
            assert!(
                addr.starts_with("0100007F")
                    || addr.starts_with("00000000000000000000000001000000"),
                "{name} on {port} binds loopback only: {l}"
            );
        }
    }

    let (image, token) = block_on(write_data(&env));

    // SIGKILL every server: each is restarted with its data.
    let before = p.status();
    for (name, s) in &before {
        let pid = s["pid"].as_u64().expect("pid");
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(
            wait_until(Duration::from_secs(20), || {
                let st = p.status();
                st[name]["healthy"] == true && st[name]["pid"].as_u64() != Some(pid)
            }),
            "{name} restarted and healthy after SIGKILL"
        );
    }
    block_on(check_data(&env, &image, &token));

    // down, up: everything comes back with its data.
    assert_eq!(p.run(&["down"]).code, 0);
    assert!(ports
        .iter()
        .filter(|(n, _)| **n != "preview")
        .all(|(_, port)| !listening(*port)));
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    block_on(check_data(&env, &image, &token));
}

/// One admin API call through Garage's CLI (over RPC, as the bootstrap makes them).
fn garage_api(config: &std::path::Path, endpoint: &str, payload: &str) -> serde_json::Value {
    let out = std::process::Command::new("garage")
        .arg("-c")
        .arg(config)
        .args(["json-api", endpoint, payload])
        .output()
        .expect("run garage");
    assert!(
        out.status.success(),
        "{endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn garage_bootstrap_repairs_what_is_missing_and_names_the_fix_for_a_deleted_key() {
    if which::which("garage").is_err() {
        panic!("run scripts/install-deps.sh first; missing: garage");
    }
    let (s3p, admin, rpc) = (free_port(), free_port(), free_port());
    let p = Project::new("garage");
    p.default_service_ports("minio", &[(29000, s3p), (29001, admin), (29002, rpc)]);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let config = p.state_dir().join("data/minio/garage.toml");
    let env = p.run(&["env", "--json"]).json();
    let env: BTreeMap<String, String> = serde_json::from_value(env).expect("env map");
    let key = env["AWS_ACCESS_KEY_ID"].clone();
    let bucket_id = |alias: &str| {
        garage_api(
            &config,
            "GetBucketInfo",
            &format!(r#"{{"globalAlias":"{alias}"}}"#),
        )["id"]
            .as_str()
            .expect("bucket id")
            .to_string()
    };

    // Take away a permission, the key's right to create buckets, and a whole bucket.
    garage_api(
        &config,
        "DenyBucketKey",
        &format!(
            r#"{{"bucketId":"{}","accessKeyId":"{key}","permissions":{{"read":false,"write":true,"owner":false}}}}"#,
            bucket_id("backups")
        ),
    );
    garage_api(
        &config,
        "UpdateKey",
        &format!(r#"{{"id":"{key}","body":{{"deny":{{"createBucket":true}}}}}}"#),
    );
    garage_api(
        &config,
        "DeleteBucket",
        &format!(r#"{{"id":"{}"}}"#, bucket_id("boxlite")),
    );
    let r = p.run(&["restart", "minio"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let info = garage_api(&config, "GetKeyInfo", &format!(r#"{{"id":"{key}"}}"#));
    assert_eq!(info["permissions"]["createBucket"], true, "{info}");
    for alias in ["boxlite", "backups"] {
        let b = info["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .find(|b| b["globalAliases"][0] == alias)
            .unwrap_or_else(|| panic!("{alias} is back: {info}"));
        for perm in ["read", "write", "owner"] {
            assert_eq!(b["permissions"][perm], true, "{alias} {perm}: {info}");
        }
    }
    block_on(async {
        s3(&env)
            .put_object()
            .bucket("backups")
            .key("after-repair")
            .body(ByteStream::from_static(b"ok"))
            .send()
            .await
            .expect("write to the repaired bucket")
    });

    // A deleted key cannot be imported again: `up` fails naming the fix, which works.
    garage_api(&config, "DeleteKey", &format!(r#"{{"id":"{key}"}}"#));
    let r = p.run(&["restart", "minio"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert!(
        r.stderr.contains("never reuses a key id") && r.stderr.contains("rebuild-box minio"),
        "{}",
        r.stderr
    );
    let r = p.run(&["rebuild-box", "minio"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let buckets = block_on(stack::s3::list_buckets(
        &env["S3_ENDPOINT"],
        "us-east-1",
        &key,
        &env["AWS_SECRET_ACCESS_KEY"],
    ))
    .expect("list buckets after the rebuild");
    let mut buckets = buckets;
    buckets.sort();
    assert_eq!(buckets, ["backups", "boxlite"]);
}
