//! Checks of what crosses the wire: names, sandbox ids, absolute file paths and environment
//! variable names. Both the control plane and the runners apply them to what they receive.

use std::collections::BTreeMap;

/// Why a value was refused; the message names the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// A name with characters or a length a name cannot have.
    #[error("`{0}` is not a valid name: use 1-63 letters, digits, `.`, `_` or `-`, starting with a letter or digit")]
    Name(String),
    /// Not a UUID in its canonical form.
    #[error(
        "`{0}` is not a valid id: expected a UUID such as 0b9d6a2e-8f3c-4c1e-9a57-3f0e2b7c1d4a"
    )]
    Id(String),
    /// A relative path, or one with `..`, an empty component or a NUL byte.
    #[error("`{0}` is not an absolute path inside the sandbox: give one such as /home/user/file.txt, without `..`")]
    Path(String),
    /// An environment variable name with characters a name cannot have.
    #[error("`{0}` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit")]
    EnvName(String),
    /// A number outside the allowed range.
    #[error("`{field}` must be between {min} and {max}, got {value}")]
    Range {
        /// The field (camelCase, as on the wire).
        field: &'static str,
        /// The value received.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
}

/// A runner, sandbox or label name: 1-63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn name(s: &str) -> Result<&str, CheckError> {
    let ok = (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s)
    } else {
        Err(CheckError::Name(shorten(s)))
    }
}

/// A sandbox id: a UUID (any case), returned in its canonical lowercase form.
pub fn id(s: &str) -> Result<String, CheckError> {
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(CheckError::Id(shorten(s)))
    }
}

/// A file path inside a sandbox: absolute, no `.` or `..` components, no empty ones (`//`),
/// no NUL. This is the lexical check; a runner also refuses symlinks that leave the root.
pub fn absolute_path(s: &str) -> Result<&str, CheckError> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(CheckError::Path(shorten(s)));
    };
    let ok = s.len() <= 4096
        && !s.contains('\0')
        && (rest.is_empty()
            || rest
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".."));
    if ok {
        Ok(s)
    } else {
        Err(CheckError::Path(shorten(s)))
    }
}

/// An environment map whose names are all valid variable names.
pub fn env(map: &BTreeMap<String, String>) -> Result<(), CheckError> {
    for k in map.keys() {
        let ok = !k.is_empty()
            && k.len() <= 255
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(CheckError::EnvName(shorten(k)));
        }
    }
    Ok(())
}

/// `value` within `min..=max`, or a [`CheckError::Range`] naming `field`.
pub fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<u64, CheckError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(CheckError::Range {
            field,
            value,
            min,
            max,
        })
    }
}

/// Values echoed in messages are cut, so a megabyte of garbage does not come back.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_stay_lexically_inside() {
        for good in ["/", "/a", "/home/user/file.txt", "/a/b..c"] {
            assert_eq!(absolute_path(good), Ok(good), "{good}");
        }
        for bad in [
            "", "a", "./a", "/a/../b", "/..", "/a/./b", "/a//b", "/a/", "/a\0b",
        ] {
            assert!(absolute_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_uuids_and_come_back_lowercase() {
        assert_eq!(
            id("0B9D6A2E-8F3C-4C1E-9A57-3F0E2B7C1D4A").as_deref(),
            Ok("0b9d6a2e-8f3c-4c1e-9a57-3f0e2b7c1d4a")
        );
        for bad in [
            "",
            "x",
            "0b9d6a2e8f3c4c1e9a573f0e2b7c1d4a",
            "0b9d6a2e-8f3c-4c1e-9a57-3f0e2b7c1d4g",
        ] {
            assert!(id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_env_and_ranges() {
        assert!(name("runner-a").is_ok());
        assert!(name("-a").is_err());
        assert!(name(&"a".repeat(64)).is_err());
        assert!(name("a b").is_err());
        let mut m = BTreeMap::new();
        m.insert("PATH_2".to_string(), String::new());
        assert!(env(&m).is_ok());
        m.insert("2X".to_string(), String::new());
        assert!(env(&m).is_err());
        assert!(range("cpu", 0, 1, 8).is_err());
        assert_eq!(range("cpu", 2, 1, 8), Ok(2));
        let long = "x".repeat(10_000);
        assert!(name(&long).unwrap_err().to_string().len() < 300);
    }
}
