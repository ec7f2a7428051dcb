//! The reference platform's control plane (`control-plane`, the stack's `api`) and preview
//! proxy (`preview-proxy`, the stack's `proxy`), as docs/platform.md describes them.
//!
//! One module per noun: [`config`] (settings from the environment), [`app`] (the API's router
//! and shared state), [`auth`] (who calls), [`audit`] (what they changed), [`sandboxes`],
//! [`backups`], [`migration`] (moves between runners, drains), [`runners`], [`toolbox`], [`previews`], [`runner_client`] (calls to a runner), [`db`],
//! [`cache`] (Redis, for what expires), [`input`] (bodies, paths and queries, checked),
//! [`proxy`] (the preview proxy) and [`error`] (every failure as an HTTP answer).

#![warn(missing_docs)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod input;
pub mod migration;
pub mod previews;
pub mod proxy;
pub mod runner_client;
pub mod runners;
pub mod sandboxes;
pub mod toolbox;

/// A binary's life: its settings (`config`, read from the environment; exit 2 when unusable),
/// then `serve` until SIGTERM (exit 1 when it fails). Errors go to stderr, prefixed by `name`.
pub async fn run<C, F>(
    name: &str,
    config: Result<C, config::ConfigError>,
    serve: impl FnOnce(C) -> F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), error::StartError>>,
{
    let result = match config {
        Ok(c) => serve(c).await,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Waits for SIGTERM (what `stack down` sends) or Ctrl-C, for a graceful shutdown.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
