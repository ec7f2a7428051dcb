//! Reading a stack: locate `stack.yaml`, read it and every service file, run the checks across
//! services, then return a fully typed [`Stack`] or every problem together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::checker::Checker;
use super::discover::{find_stack_file, service_files};
use super::shared::shared_vars;
use super::{checks, defaults, display_path, service, stack_file};
use super::{SpecError, SpecErrors, Stack};

/// Where to find the stack and the state dir.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f FILE`; searched upward from `cwd` when absent.
    pub file: Option<PathBuf>,
    /// Directory to search from.
    pub cwd: PathBuf,
    /// `--state-dir` or `STACK_STATE_DIR`; `.stack/` beside stack.yaml when absent.
    pub state_dir: Option<PathBuf>,
    /// The process environment used for interpolation.
    pub env: HashMap<String, String>,
    /// `${stack_exe}`: the `stack` binary tasks call (this executable when absent).
    pub stack_exe: Option<PathBuf>,
}

pub(super) fn load(opts: &LoadOptions) -> Result<Stack, SpecErrors> {
    let file = match &opts.file {
        Some(f) => opts.cwd.join(f),
        None => find_stack_file(&opts.cwd).ok_or_else(|| {
            SpecErrors(vec![SpecError {
                file: PathBuf::from(defaults::STACK_FILE_NAMES[0]),
                line: 0,
                path: String::new(),
                message: format!(
                    "no stack.yaml in {} or any parent directory: run `stack` inside a project or pass `-f PATH`",
                    opts.cwd.display()
                ),
            }])
        })?,
    };
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    let root = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let state_dir = match &opts.state_dir {
        Some(d) => opts.cwd.join(d),
        None => root.join(defaults::STATE_DIR),
    };
    let mut errors = Vec::new();

    let rel_stack = display_path(&file, &root);
    let stack = stack_file::read(&file, &rel_stack, &root, &opts.env, &mut errors);
    let files = service_files(&root, &mut errors);
    let shared = shared_vars(&files, &stack.env, opts.stack_exe.clone());
    let parsed = files
        .iter()
        .map(|f| {
            let mut c = Checker::new(f.rel.clone(), &mut errors);
            service::read(&mut c, f, &stack.env, &shared, &state_dir, &root)
        })
        .collect();
    let services = checks::check(parsed, &mut errors);

    // Stable, so problems on one line keep the order they were found in.
    errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    Ok(Stack {
        name: stack.name,
        backend: stack.backend,
        root,
        file,
        state_dir,
        services,
    })
}
