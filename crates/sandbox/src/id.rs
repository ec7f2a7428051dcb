//! Sandbox ids: one string that is at once a runc container id, a directory name and the
//! sandbox's hostname, so it is held to the strictest of the three.

use std::fmt;

/// A validated sandbox id: 1 to 63 characters of `[a-z0-9-]`, starting and ending with a letter
/// or digit (a DNS label: valid as a hostname, a runc id and a file name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(String);

/// A string that cannot be a sandbox id.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a sandbox id: 1 to 63 of `a-z`, `0-9` and `-`, not starting or ending with `-`"
)]
pub struct IdError(pub String);

impl SandboxId {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(IdError(s.to_string()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_labels() {
        assert!(SandboxId::parse("sb-1").is_ok());
        assert!(SandboxId::parse(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "A", "a/b", "..", "a.b", &"a".repeat(64)] {
            assert!(SandboxId::parse(bad).is_err(), "{bad}");
        }
    }
}
