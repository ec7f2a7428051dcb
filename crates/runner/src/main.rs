//! `runner`: runs the platform's sandboxes on this machine for the control plane. Settings come
//! from the environment (see `settings`); the life cycle is `lifecycle::run`.

mod api;
mod auth;
mod backups;
mod choice;
mod error;
mod extract;
mod forward;
mod lifecycle;
mod reaper;
mod registration;
mod sandboxes;
mod settings;
mod wire;

use std::process::ExitCode;

/// sysexits' EX_CONFIG: a setting is missing or wrong, restarting cannot help.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let settings = match settings::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runner: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Before any thread: finding BoxLite's runtime sets an environment variable.
    let choice = match choice::choose(settings.driver, || {
        choice::boxes(settings.boot_probe.as_ref())
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runner: cannot start: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(lifecycle::run(settings, choice)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runner: {}", error::describe(&e));
            ExitCode::FAILURE
        }
    }
}
