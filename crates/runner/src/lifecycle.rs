//! The runner's life: become the sandboxes' reaper, take back what a previous runner left, serve
//! the API on 127.0.0.1, register; on SIGTERM or SIGINT (`stack down`, `stack restart`) stop
//! serving and stop every sandbox, kept to be started again by the next runner on this home.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::api::{self, App};
use crate::auth::Token;
use crate::backups::Backups;
use crate::choice::{self, Choice, DriverKind};
use crate::sandboxes::Sandboxes;
use crate::settings::Settings;
use crate::{reaper, registration};

/// How long open connections (a forwarded stream, say) get to finish once a stop is asked for.
const DRAIN: Duration = Duration::from_secs(3);

/// Why the runner could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// prctl refused.
    #[error("cannot become the child subreaper of the sandboxes")]
    Subreaper(#[source] std::io::Error),
    /// The home or the box driver could not be opened.
    #[error(transparent)]
    Home(#[from] choice::OpenError),
    /// Taking back the previous runner's sandboxes failed as a whole.
    #[error("cannot take back the sandboxes of the runner's home")]
    Boot(#[source] sandbox::DriverError),
    /// The port is taken.
    #[error("cannot listen on 127.0.0.1:{port}: is another runner using RUNNER_PORT?")]
    Bind {
        /// The port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Listening signals could not be set up.
    #[error("cannot handle SIGTERM and SIGINT")]
    Signals(#[source] std::io::Error),
    /// The server failed.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Runs the runner on the box driver chosen (see `choice`) until SIGTERM or SIGINT, then stops
/// its sandboxes.
pub async fn run(settings: Settings, choice: Choice) -> Result<(), RunError> {
    // runc leaves each sandbox's init to be reaped by the runner. BoxLite waits for its own
    // helpers and its boxes are detached: a reaper scanning for zombies would race its waits.
    if choice.kind == DriverKind::Runc {
        reaper::become_subreaper().map_err(RunError::Subreaper)?;
        reaper::spawn();
    }
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            port: settings.port,
            source,
        })?;
    let driver = choice::open(
        choice.kind,
        settings.home.clone(),
        &settings.name,
        &settings.registry,
        settings.outbound,
    )?;
    let sandboxes = Sandboxes::new(driver, settings.registry.clone(), settings.capacity);
    eprintln!(
        "runner: outbound network access of new sandboxes: {}",
        match (choice.kind, settings.outbound) {
            (DriverKind::Runc, sandbox::Outbound::On) =>
                "on (slirp4netns; never the host's loopback)",
            (DriverKind::Runc, sandbox::Outbound::Off) => "off (RUNNER_OUTBOUND=on to give it)",
            // BoxLite gives every box its own network: RUNNER_OUTBOUND is runc's.
            (DriverKind::Microvm, _) =>
                "BoxLite's network (egress through its gvproxy; RUNNER_OUTBOUND applies to runc only)",
        }
    );
    if let Some(holder) = sandboxes.holder_pid() {
        eprintln!(
            "runner: running as uid {} (not root): sandboxes run in a user namespace held by pid {holder}; \
             their cpu, memory and pids limits are not applied (no cgroup delegation), and every file in them is owned by root",
            nix::unistd::geteuid()
        );
    }
    let boot = sandboxes.boot().await.map_err(RunError::Boot)?;
    eprintln!(
        "runner: {} on 127.0.0.1:{}, sandboxes on {} ({}): {} adopted, {} resumed, {} kept stopped, {} leftovers cleaned, {} staged restores removed",
        settings.name,
        settings.port,
        choice.kind.name(),
        choice.why,
        boot.adopted.len(),
        boot.resumed.len(),
        boot.stopped.len(),
        boot.cleaned.len(),
        boot.staged.len()
    );
    for (id, why) in &boot.failed {
        eprintln!("runner: sandbox {id} could not be taken back (kept, stopped): {why}");
    }
    let sandboxes = Arc::new(sandboxes);
    let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    registration::spawn(&settings, Arc::clone(&sandboxes), Arc::clone(&registered));

    let backups = settings.backups.as_ref().map(|b| {
        eprintln!(
            "runner: backups to s3://{}/ at {}, the last {} kept per sandbox",
            b.bucket, b.endpoint, b.keep
        );
        Arc::new(Backups::new(b))
    });
    let app = App {
        name: settings.name.clone(),
        sandboxes: Arc::clone(&sandboxes),
        registered,
        backups,
    };
    let router = api::router(app, Token::new(&settings.token));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("runner: {signal}: stopping its sandboxes");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(DRAIN, server).await {
        Ok(Ok(Err(e))) => return Err(RunError::Serve(e)),
        Ok(_) => {}
        Err(_) => eprintln!("runner: connections still open after {DRAIN:?}: closing them"),
    }
    match sandboxes.shutdown().await {
        Ok(stopped) => eprintln!(
            "runner: {} sandboxes stopped, to be started again on the next start",
            stopped.len()
        ),
        Err(e) => eprintln!("runner: cannot stop the sandboxes: {e}"),
    }
    // Not root: the user namespace's holder goes too once nothing runs in it.
    match sandboxes.release().await {
        Ok(true) => eprintln!("runner: the sandboxes' user namespace holder ended"),
        Ok(false) => {}
        Err(e) => eprintln!("runner: cannot end the sandboxes' user namespace holder: {e}"),
    }
    Ok(())
}
