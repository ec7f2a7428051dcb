//! Finding and reading the files of a stack: `stack.yaml` upward from a directory, and
//! `services/*.yaml` beside it, each parsed into a position-carrying YAML tree.

use std::path::{Path, PathBuf};

use super::defaults::{SERVICES_DIR, STACK_FILE_NAMES};
use super::yaml::{self, Node};
use super::{display_path, SpecError};

/// Finds `stack.yaml` in `start` or the nearest ancestor.
pub fn find_stack_file(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        STACK_FILE_NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
    })
}

/// One service file, read and parsed.
pub(super) struct ServiceFile {
    /// The path relative to the project root, as messages show it.
    pub rel: PathBuf,
    /// The file name without its extension: the service's name unless `name:` says otherwise.
    pub stem: String,
    /// The parsed document.
    pub doc: Node,
}

/// Every `services/*.yaml` (or `.yml`) of the project at `root`, in file-name order. Files that
/// cannot be read or parsed are reported and left out.
pub(super) fn service_files(root: &Path, errors: &mut Vec<SpecError>) -> Vec<ServiceFile> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(SERVICES_DIR))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml") | Some("yml")
                        )
                })
                .collect()
        })
        .unwrap_or_default();
    // Sorted, so messages and the order services are seen in do not depend on the file system.
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let rel = display_path(&path, root);
            let doc = read_yaml(&path, &rel, errors)?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            Some(ServiceFile { rel, stem, doc })
        })
        .collect()
}

/// Reads and parses one YAML file; `rel` is how messages name it.
pub(super) fn read_yaml(path: &Path, rel: &Path, errors: &mut Vec<SpecError>) -> Option<Node> {
    let problem = |line: usize, message: String| SpecError {
        file: rel.to_path_buf(),
        line,
        path: String::new(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(problem(0, format!("cannot read the file: {e}")));
            return None;
        }
    };
    match yaml::parse(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(problem(
                e.line,
                format!("invalid YAML at column {}: {}", e.col, e.message),
            ));
            None
        }
    }
}
