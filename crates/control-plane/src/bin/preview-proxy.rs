//! `preview-proxy`: the stack's `proxy` (docs/platform.md). Settings come from the environment.

use control_plane::{config::ProxyConfig, proxy};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control_plane::run("preview-proxy", ProxyConfig::from_env(), proxy::serve).await
}
