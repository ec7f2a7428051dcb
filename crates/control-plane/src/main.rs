//! `control-plane`: the stack's `api` (docs/platform.md). Settings come from the environment.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match control_plane::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    match control_plane::app::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}
