//! `control-plane`: the stack's `api` (docs/platform.md). Settings come from the environment.

use control_plane::{app, config::Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control_plane::run("control-plane", Config::from_env(), app::serve).await
}
