//! `stack rehearse migration`: the end-to-end migration test a team runs on a laptop. N
//! sandboxes are created on one runner with known content (random data written inside, a file
//! uploaded from here, a web server behind a signed preview URL), moved to the other runner
//! through the control plane's API, verified (same ids, every file's hash, exec, the preview
//! URLs handed out before the move), drained back and verified again, then deleted with their
//! backups. Any difference fails the rehearsal, naming the sandbox and what differed.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{human, quantile, Phase, Phases};
use crate::controlplane::{ApiError, ControlPlane};
use crate::exports::Exports;

/// Bytes of the file each sandbox gets uploaded from here.
const UPLOAD_BYTES: usize = 256 << 10;
/// The port the sandboxes' web servers listen on.
const WEB_PORT: u16 = 8080;

/// What to rehearse with.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many sandboxes.
    pub sandboxes: usize,
    /// MiB of random data written in each.
    pub size_mb: u32,
    /// Their image (in the stack's registry).
    pub image: String,
    /// Keep the sandboxes and their backups at the end.
    pub keep: bool,
}

/// How one move went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    /// The sandbox.
    pub id: String,
    /// From, to.
    pub from: String,
    /// To.
    pub to: String,
    /// The control plane's figures: `totalMs`, `backupMs`, `restoreMs`, `sizeBytes`, ...
    pub figures: Value,
}

/// What `stack rehearse migration --json` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Nothing differed and nothing failed.
    pub ok: bool,
    /// How many sandboxes.
    pub sandboxes: usize,
    /// MiB written in each.
    pub size_mb: u32,
    /// The runner they started on.
    pub source: String,
    /// The runner they moved to.
    pub target: String,
    /// Each phase.
    pub phases: Vec<Phase>,
    /// Each move there and back.
    pub moves: Vec<Move>,
    /// Per sandbox, the move there: median and 95th percentile (whole move, as the control
    /// plane timed it).
    pub migrate_p50_ms: u64,
    /// See `migrate_p50_ms`.
    pub migrate_p95_ms: u64,
    /// What differed, per sandbox.
    pub mismatches: Vec<String>,
    /// What failed, if the rehearsal could not go on.
    pub failure: Option<String>,
}

/// Why a rehearsal could not even start.
#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    /// The control plane cannot be called.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Fewer than two runners are ready.
    #[error("a migration rehearsal needs two ready runners; the control plane has: {0}. `stack up` the default stack (runner-a and runner-b), `stack status`")]
    Runners(String),
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

/// One sandbox of the rehearsal and what it must still hold.
#[derive(Debug, Clone)]
struct Subject {
    id: String,
    /// `sha256sum` of its files, as it printed it before any move.
    hashes: String,
    /// The uploaded file's SHA-256, computed here.
    upload: String,
    /// What its web server serves.
    page: String,
    /// Its preview URL, handed out before any move.
    preview: String,
}

/// A runner: its name and id.
#[derive(Debug, Clone)]
struct Runner {
    name: String,
    id: String,
    sandboxes: i64,
}

/// Runs the rehearsal on the stack whose exports are `exports`; `progress` is told each phase
/// as it ends.
pub async fn run(
    exports: &Exports,
    options: &Options,
    mut progress: impl FnMut(&Phase),
) -> Result<Report, RehearsalError> {
    if options.sandboxes == 0 || options.sandboxes > 50 {
        return Err(RehearsalError::Options("--sandboxes takes 1 to 50".into()));
    }
    if options.size_mb > 4096 {
        return Err(RehearsalError::Options(
            "--size takes 0 to 4096 (MiB)".into(),
        ));
    }
    let api = ControlPlane::from_exports(exports)?;
    let s3 = exports.s3_client().ok().flatten();
    let mut phases = Phases::default();
    let t0 = Instant::now();
    let runners: Vec<Value> = api.call(Method::GET, "/runners", None).await?;
    let ready: Vec<Runner> = runners
        .iter()
        .filter(|r| r["state"] == "ready")
        .map(|r| Runner {
            name: r["name"].as_str().unwrap_or_default().into(),
            id: r["id"].as_str().unwrap_or_default().into(),
            sandboxes: r["sandboxes"].as_i64().unwrap_or(0),
        })
        .collect();
    let [source, target, ..] = ready.as_slice() else {
        let seen: Vec<String> = runners
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        return Err(RehearsalError::Runners(if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }));
    };
    let (source, target) = (source.clone(), target.clone());
    phases.push("runners", t0, format!("{} → {}", source.name, target.name));
    if let Some(p) = phases.done.last() {
        progress(p);
    }

    let mut report = Report {
        ok: false,
        sandboxes: options.sandboxes,
        size_mb: options.size_mb,
        source: source.name.clone(),
        target: target.name.clone(),
        phases: Vec::new(),
        moves: Vec::new(),
        migrate_p50_ms: 0,
        migrate_p95_ms: 0,
        mismatches: Vec::new(),
        failure: None,
    };
    let mut created = Vec::new();
    let outcome = rehearse(
        &api,
        options,
        &source,
        &target,
        &mut phases,
        &mut report,
        &mut created,
        &mut progress,
    )
    .await;
    if let Err(e) = outcome {
        report.failure = Some(e.to_string());
    }
    if !options.keep {
        let t0 = Instant::now();
        let (deleted, objects, problems) = clean_up(&api, s3.as_ref(), &created).await;
        for p in problems {
            report.mismatches.push(format!("cleanup: {p}"));
        }
        phases.push(
            "cleanup",
            t0,
            format!("{deleted} sandboxes deleted, {objects} backup objects removed"),
        );
        if let Some(p) = phases.done.last() {
            progress(p);
        }
    }
    report.phases = phases.done;
    report.ok = report.failure.is_none() && report.mismatches.is_empty();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn rehearse(
    api: &ControlPlane,
    options: &Options,
    source: &Runner,
    target: &Runner,
    phases: &mut Phases,
    report: &mut Report,
    created: &mut Vec<String>,
    progress: &mut impl FnMut(&Phase),
) -> Result<(), ApiError> {
    let mut step = |phases: &mut Phases, name: &str, t0: Instant, detail: String| {
        phases.push(name, t0, detail);
        if let Some(p) = phases.done.last() {
            progress(p);
        }
    };

    // Create them on the source, all at once.
    let t0 = Instant::now();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..options.sandboxes {
        let (api, body) = (
            api.clone(),
            json!({
                "name": format!("rehearsal-{stamp}-{i}"),
                "image": options.image,
                "runner": source.name,
                "labels": {"stack.rehearsal": "migration"},
            }),
        );
        tasks.spawn(async move {
            api.call::<Value>(Method::POST, "/sandbox", Some(&body))
                .await
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(sb)) => created.push(sb["id"].as_str().unwrap_or_default().to_string()),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ApiError::Answer {
                    method: "POST".into(),
                    path: "/sandbox".into(),
                    why: e.to_string(),
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    created.sort();
    step(
        phases,
        "create",
        t0,
        format!("{} sandboxes on {}", created.len(), source.name),
    );

    // Known content in each, its hashes taken inside and here.
    let t0 = Instant::now();
    let mut subjects = Vec::new();
    for id in created.iter() {
        let page = format!("rehearsal {id} {}\n", random_hex(8));
        let write = format!(
            "mkdir -p /data /srv && dd if=/dev/urandom of=/data/blob bs=1M count={} 2>/dev/null && printf '%s' '{page}' > /srv/index.html && sha256sum /data/blob /srv/index.html",
            options.size_mb
        );
        let hashes = match api.exec(id, &write).await? {
            Ok(out) => out,
            Err(why) => {
                report
                    .mismatches
                    .push(format!("{id}: writing its data failed: {why}"));
                continue;
            }
        };
        let upload = random_bytes(UPLOAD_BYTES);
        let upload_hash = sha256(&upload);
        api.upload(id, "/data/upload.bin", upload).await?;
        let _ = api.exec(id, &serve()).await?;
        let url: Value = api
            .call(
                Method::GET,
                &format!("/sandbox/{id}/ports/{WEB_PORT}/signed-preview-url"),
                None,
            )
            .await?;
        let preview = url["url"].as_str().unwrap_or_default().to_string();
        let subject = Subject {
            id: id.clone(),
            hashes,
            upload: upload_hash,
            page,
            preview,
        };
        if let Err(why) = fetch_preview(api, &subject).await {
            report
                .mismatches
                .push(format!("{id}: before any move, {why}"));
        }
        subjects.push(subject);
    }
    step(
        phases,
        "write",
        t0,
        format!(
            "{} MiB + {} KiB uploaded in each, {} preview URLs answer",
            options.size_mb,
            UPLOAD_BYTES >> 10,
            subjects.len()
        ),
    );

    // There, one at a time (each move's own time is what is measured).
    let t0 = Instant::now();
    let mut there = Vec::new();
    for s in &subjects {
        let moved: Value = api
            .call(
                Method::POST,
                &format!("/sandbox/{}/migrate", s.id),
                Some(&json!({ "runner": target.name })),
            )
            .await?;
        there.push(moved["totalMs"].as_u64().unwrap_or(0));
        report.moves.push(Move {
            id: s.id.clone(),
            from: source.name.clone(),
            to: target.name.clone(),
            figures: moved,
        });
    }
    report.migrate_p50_ms = quantile(&there, 0.5);
    report.migrate_p95_ms = quantile(&there, 0.95);
    step(
        phases,
        "migrate",
        t0,
        format!(
            "{} moved to {}; per sandbox p50 {}, p95 {}",
            there.len(),
            target.name,
            human(report.migrate_p50_ms),
            human(report.migrate_p95_ms)
        ),
    );
    let t0 = Instant::now();
    let checked = verify(api, &subjects, target, &mut report.mismatches).await?;
    step(phases, "verify", t0, checked);

    // And back: a drain when the target holds only the rehearsal's sandboxes, else one by one
    // (a drain would move other sandboxes too).
    let t0 = Instant::now();
    let back = if target.sandboxes == 0 {
        let drained: Value = api
            .call(
                Method::POST,
                &format!("/runners/{}/drain", target.name),
                Some(&json!({})),
            )
            .await?;
        let _: Value = api
            .call(
                Method::POST,
                &format!("/runners/{}/enable", target.name),
                Some(&json!({})),
            )
            .await?;
        for f in drained["failed"].as_array().into_iter().flatten() {
            report.mismatches.push(format!(
                "{}: the drain could not move it: {}",
                f["id"].as_str().unwrap_or("?"),
                f["error"].as_str().unwrap_or("?")
            ));
        }
        for m in drained["migrated"].as_array().into_iter().flatten() {
            report.moves.push(Move {
                id: m["id"].as_str().unwrap_or_default().into(),
                from: target.name.clone(),
                to: m["to"].as_str().unwrap_or_default().into(),
                figures: m.clone(),
            });
        }
        format!(
            "{} drained ({} moved back in {}), enabled again",
            target.name,
            drained["migrated"].as_array().map(Vec::len).unwrap_or(0),
            human(drained["totalMs"].as_u64().unwrap_or(0))
        )
    } else {
        for s in &subjects {
            let moved: Value = api
                .call(
                    Method::POST,
                    &format!("/sandbox/{}/migrate", s.id),
                    Some(&json!({ "runner": source.name })),
                )
                .await?;
            report.moves.push(Move {
                id: s.id.clone(),
                from: target.name.clone(),
                to: source.name.clone(),
                figures: moved,
            });
        }
        format!(
            "{} moved back one by one ({} holds other sandboxes: not drained)",
            subjects.len(),
            target.name
        )
    };
    step(phases, "back", t0, back);
    let t0 = Instant::now();
    let checked = verify(api, &subjects, source, &mut report.mismatches).await?;
    step(phases, "verify", t0, checked);
    Ok(())
}

/// The command that starts a sandbox's web server (again: processes do not move).
fn serve() -> String {
    format!("busybox httpd -p {WEB_PORT} -h /srv")
}

/// Checks every subject on `runner`: its id, state, files, exec and preview URL. Returns what
/// was checked; differences go to `mismatches`.
async fn verify(
    api: &ControlPlane,
    subjects: &[Subject],
    runner: &Runner,
    mismatches: &mut Vec<String>,
) -> Result<String, ApiError> {
    let mut files = 0;
    for s in subjects {
        let id = &s.id;
        let sb: Value = api
            .call(Method::GET, &format!("/sandbox/{id}"), None)
            .await?;
        if sb["runnerId"] != runner.id.as_str() || sb["state"] != "started" {
            mismatches.push(format!(
                "{id}: expected started on {}, the control plane says {} on {}",
                runner.name, sb["state"], sb["runnerId"]
            ));
            continue;
        }
        match api.exec(id, "hostname").await? {
            Ok(h) if h.trim() == id => {}
            Ok(h) => mismatches.push(format!("{id}: its hostname inside is {}", h.trim())),
            Err(why) => mismatches.push(format!("{id}: exec failed: {why}")),
        }
        match api.exec(id, "sha256sum /data/blob /srv/index.html").await? {
            Ok(h) if h == s.hashes => files += 2,
            Ok(h) => mismatches.push(format!(
                "{id}: files differ:\n    before: {}\n    now:    {}",
                s.hashes.trim().replace('\n', "; "),
                h.trim().replace('\n', "; ")
            )),
            Err(why) => mismatches.push(format!("{id}: cannot hash its files: {why}")),
        }
        let upload = sha256(&api.download(id, "/data/upload.bin").await?);
        if upload == s.upload {
            files += 1;
        } else {
            mismatches.push(format!(
                "{id}: /data/upload.bin is {upload}, it was uploaded as {}",
                s.upload
            ));
        }
        if let Err(why) = api.exec(id, &serve()).await? {
            mismatches.push(format!("{id}: its web server does not start: {why}"));
        }
        if let Err(why) = fetch_preview(api, s).await {
            mismatches.push(format!("{id}: {why}"));
        }
    }
    Ok(format!(
        "{} ids and states on {}, {files} file hashes, exec, {} preview URLs",
        subjects.len(),
        runner.name,
        subjects.len()
    ))
}

/// Why a preview URL did not serve what it should.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The control plane handed out something that is not a URL.
    #[error("its preview URL `{url}` does not parse: {source}")]
    Unparsable {
        /// What it handed out.
        url: String,
        /// Why.
        #[source]
        source: url::ParseError,
    },
    /// It serves another page.
    #[error("its preview URL serves {found:?}, not {expected:?}")]
    Differs {
        /// What it serves.
        found: String,
        /// What the sandbox's web server was given.
        expected: String,
    },
    /// It does not answer with a page within 5 s.
    #[error("its preview URL {url} does not serve the page within 5 s: {last}")]
    NoPage {
        /// The URL.
        url: String,
        /// The last answer or error.
        last: String,
    },
}

/// Fetches the subject's preview URL (through Caddy, `*.localhost` on loopback) and compares
/// the page; waits up to 5 s for the web server to listen.
async fn fetch_preview(api: &ControlPlane, s: &Subject) -> Result<(), PreviewError> {
    let url = url::Url::parse(&s.preview).map_err(|source| PreviewError::Unparsable {
        url: s.preview.clone(),
        source,
    })?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed().as_secs() < 5 {
        let resp = api
            .http()
            .get(format!("http://127.0.0.1:{port}{}", url.path()))
            .header("host", format!("{host}:{port}"))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                let found = r.text().await.unwrap_or_default();
                return if found == s.page {
                    Ok(())
                } else {
                    Err(PreviewError::Differs {
                        found,
                        expected: s.page.clone(),
                    })
                };
            }
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(PreviewError::NoPage {
        url: s.preview.clone(),
        last,
    })
}

/// Deletes the sandboxes and their backups' objects: (sandboxes, objects, problems).
async fn clean_up(
    api: &ControlPlane,
    s3: Option<&aws_sdk_s3::Client>,
    ids: &[String],
) -> (usize, usize, Vec<String>) {
    let (mut deleted, mut objects, mut problems) = (0, 0, Vec::new());
    for id in ids {
        let buckets: BTreeMap<String, ()> = match api
            .call::<Vec<Value>>(Method::GET, &format!("/sandbox/{id}/backups"), None)
            .await
        {
            Ok(list) => list
                .iter()
                .filter_map(|b| b["bucket"].as_str().map(|b| (b.to_string(), ())))
                .collect(),
            Err(e) => {
                problems.push(format!("{id}: its backups cannot be listed: {e}"));
                BTreeMap::new()
            }
        };
        match api
            .call::<Value>(Method::DELETE, &format!("/sandbox/{id}"), None)
            .await
        {
            Ok(_) => deleted += 1,
            Err(e) => problems.push(format!("{id}: {e}")),
        }
        let Some(s3) = s3 else { continue };
        for bucket in buckets.keys() {
            match crate::s3::delete_prefix(s3, bucket, &format!("{id}/")).await {
                Ok(n) => objects += n,
                Err(e) => problems.push(format!("{id}: its backups: {e}")),
            }
        }
    }
    (deleted, objects, problems)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // /dev/urandom never runs short; were it unreadable, zeros still make a checkable file.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes
}

fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}
