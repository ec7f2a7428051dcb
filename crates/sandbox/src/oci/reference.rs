//! Image references as users write them: `<registry host[:port]>/<repository>[:tag|@digest]`.
//! The registry is always named: a runner pulls from the stack's own registry, never a default.

use std::fmt;

use crate::digest::Digest;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host:port` of the registry, reached over plain HTTP.
    pub registry: String,
    /// The repository inside the registry, e.g. `boxlite/base`.
    pub repository: String,
    /// The tag or digest asked for.
    pub target: Target,
}

/// What an [`ImageRef`] points at inside its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tag, which the registry may move.
    Tag(String),
    /// A manifest digest, which names the same content forever.
    Digest(Digest),
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// No registry host before the repository.
    #[error("image `{0}` names no registry: write it as `host:port/repository[:tag]`")]
    NoRegistry(String),
    /// A repository component with characters the distribution spec does not allow.
    #[error("image `{0}` has an invalid repository name (lowercase letters, digits, `._-/`)")]
    Repository(String),
    /// A tag that is empty, too long or has invalid characters.
    #[error("image `{0}` has an invalid tag (letters, digits, `._-`, at most 128)")]
    Tag(String),
    /// A `@` suffix that is not a sha256 digest.
    #[error("image `{image}` has an invalid digest")]
    Digest {
        /// The reference as given.
        image: String,
        /// What was wrong with the digest.
        #[source]
        source: crate::digest::DigestError,
    },
}

impl ImageRef {
    /// Parses `host[:port]/repository[:tag][@sha256:...]`; the tag defaults to `latest`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let (registry, rest) = s
            .split_once('/')
            .ok_or_else(|| ReferenceError::NoRegistry(s.into()))?;
        let looks_like_host =
            registry.contains('.') || registry.contains(':') || registry == "localhost";
        if !looks_like_host {
            return Err(ReferenceError::NoRegistry(s.into()));
        }
        let (name_tag, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        // A tag's `:` comes after the last `/`.
        let (repository, tag) = match name_tag.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (name_tag, None),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(ReferenceError::Repository(s.into()));
        }
        let target = match (digest, tag) {
            (Some(d), _) => {
                Target::Digest(Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    image: s.into(),
                    source,
                })?)
            }
            (None, Some(t)) => {
                let ok = !t.is_empty()
                    && t.len() <= 128
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    && !t.starts_with(['.', '-']);
                if !ok {
                    return Err(ReferenceError::Tag(s.into()));
                }
                Target::Tag(t.to_string())
            }
            (None, None) => Target::Tag("latest".into()),
        };
        Ok(Self {
            registry: registry.into(),
            repository: repository.into(),
            target,
        })
    }

    /// The registry's base URL (`http://host:port`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.registry)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(t) => write!(f, "{}/{}:{}", self.registry, self.repository, t),
            Target::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.repository, d),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tag(t) => f.write_str(t),
            Target::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_repository_and_target() {
        let r = ImageRef::parse("127.0.0.1:25000/boxlite/base:1.0").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:25000", "boxlite/base")
        );
        assert_eq!(r.target, Target::Tag("1.0".into()));
        let r = ImageRef::parse("localhost/busybox").expect("valid");
        assert_eq!(r.to_string(), "localhost/busybox:latest");
        let d = Digest::of(b"x");
        let r = ImageRef::parse(&format!("reg.local:5000/a/b@{d}")).expect("valid");
        assert_eq!(r.target, Target::Digest(d));
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for bad in [
            "busybox",
            "library/busybox:1",
            "h:1/UPPER",
            "h:1/a/../b",
            "h:1/a:",
            "h:1/a:-x",
            "h:1/a@sha256:zz",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
