//! The variables every service sees besides the environment: each service's ports, so one
//! service can refer to another's (`${services.NAME.ports.PORT}`), and `${stack_exe}`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::discover::ServiceFile;
use super::interp::Vars;
use super::service::{NAME, PORTS};
use super::yaml::Value;

/// The shared variables of a stack whose service files are `files`. This is a first, lenient
/// pass: what it cannot read is left out here and reported when the service itself is parsed.
pub(super) fn shared_vars(
    files: &[ServiceFile],
    env: &BTreeMap<String, String>,
    stack_exe: Option<PathBuf>,
) -> BTreeMap<String, String> {
    let env_vars = Vars {
        env: env.clone(),
        own: BTreeMap::new(),
    };
    let mut shared = BTreeMap::new();
    for file in files {
        let Value::Map(entries) = &file.doc.value else {
            continue;
        };
        let field = |k: &str| {
            entries
                .iter()
                .find(|(key, _)| key.scalar_text().as_deref() == Some(k))
                .map(|(_, v)| v)
        };
        let name = field(NAME)
            .and_then(|n| n.scalar_text())
            .unwrap_or_else(|| file.stem.clone());
        if let Some(Value::Map(ports)) = field(PORTS).map(|n| &n.value) {
            for (k, v) in ports {
                let port = v.scalar_text().and_then(|t| env_vars.expand(&t).ok());
                if let (Some(k), Some(port)) = (k.scalar_text(), port) {
                    shared.insert(format!("services.{name}.ports.{k}"), port);
                }
            }
        }
    }
    // This very binary, so one-shot tasks can run `stack schema load` and the like.
    if let Some(exe) = stack_exe.or_else(|| std::env::current_exe().ok()) {
        shared.insert("stack_exe".into(), exe.display().to_string());
    }
    shared
}
