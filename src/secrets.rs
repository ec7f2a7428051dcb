//! Generated secrets of the stack (`${secret.NAME}` in config templates): random on first use,
//! kept in `<state>/secrets/NAME` with mode 0600, the same on every later start.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use crate::layout::Layout;

/// The secret `name`, created (64 hex characters) if it does not exist yet.
pub fn get_or_create(layout: &Layout, name: &str) -> io::Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a valid secret name (letters, digits, `-`, `_`)"),
        ));
    }
    let path = layout.secret(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(s.trim().to_string()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    std::fs::create_dir_all(layout.secrets_dir())?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let value = hex::encode(bytes);
    // create_new: two commands racing for the same secret agree on the first one written.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(value.as_bytes())?;
            Ok(value)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_string())
        }
        Err(e) => Err(e),
    }
}

/// Replaces every `${secret.NAME}` in `text` with the secret's value.
pub fn fill(layout: &Layout, text: &str) -> io::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${secret.") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "${secret.".len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        out.push_str(&get_or_create(layout, &after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A service's `environment:` with every `${secret.NAME}` filled in: the spec keeps them as they
/// are written, so a secret is generated when a service first starts, never by `stack plan`.
pub fn fill_env(
    layout: &Layout,
    env: &std::collections::BTreeMap<String, String>,
) -> io::Result<std::collections::BTreeMap<String, String>> {
    env.iter()
        .map(|(k, v)| Ok((k.clone(), fill(layout, v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_generated_once_private_and_filled_in() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let a = get_or_create(&layout, "rpc").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(
            get_or_create(&layout, "rpc").unwrap(),
            a,
            "stable across calls"
        );
        let mode = std::fs::metadata(layout.secret("rpc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(get_or_create(&layout, "other").unwrap(), a);
        assert_eq!(
            fill(&layout, "k=${secret.rpc};").unwrap(),
            format!("k={a};")
        );
        assert!(get_or_create(&layout, "../escape").is_err());
        let env = [(
            "RUNNER_TOKEN".to_string(),
            "${secret.runner-token}".to_string(),
        )];
        let filled = fill_env(&layout, &env.into_iter().collect()).unwrap();
        assert_eq!(
            filled["RUNNER_TOKEN"],
            get_or_create(&layout, "runner-token").unwrap()
        );
    }
}
