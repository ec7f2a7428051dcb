//! The reference platform's control plane (`control-plane`, the stack's `api`) and preview
//! proxy (`preview-proxy`, the stack's `proxy`), as docs/platform.md describes them.
//!
//! One module per noun: [`config`] (settings from the environment), [`app`] (the API's router
//! and shared state), [`auth`] (who calls), [`audit`] (what they changed), [`sandboxes`],
//! [`runners`], [`toolbox`], [`previews`], [`runner_client`] (calls to a runner), [`db`],
//! [`cache`] (Redis, for what expires), [`input`] (bodies, paths and queries, checked),
//! [`proxy`] (the preview proxy) and [`error`] (every failure as an HTTP answer).

pub mod app;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod input;
pub mod previews;
pub mod proxy;
pub mod runner_client;
pub mod runners;
pub mod sandboxes;
pub mod toolbox;

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
