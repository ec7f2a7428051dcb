//! `preview-proxy`: the stack's `proxy` (docs/platform.md). Settings come from the environment.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match control_plane::config::ProxyConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("preview-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match control_plane::proxy::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("preview-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
