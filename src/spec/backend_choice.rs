//! [`BackendChoice`]: which backend runs a stack's services, as written in `stack.yaml`, in an
//! init step's `backend:` and in `--backend`.

use serde::Serialize;

/// Which backend runs the stack's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Native processes (the default that works everywhere).
    Process,
    /// BoxLite microVMs.
    Microvm,
    /// MicroVMs where a boot probe passes, processes otherwise.
    Auto,
}

/// A backend name that is none of [`BackendChoice`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{name}`: use `process`, `microvm` or `auto`")]
pub struct UnknownBackend {
    /// The name as written.
    pub name: String,
}

impl std::str::FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "process" => Ok(Self::Process),
            "microvm" => Ok(Self::Microvm),
            "auto" => Ok(Self::Auto),
            other => Err(UnknownBackend {
                name: other.to_string(),
            }),
        }
    }
}

impl BackendChoice {
    /// The name used in stack files, records and `status` (a backend's `name()`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Microvm => "microvm",
            Self::Auto => "auto",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_parses_back_from_its_name_and_others_are_refused() {
        for b in [
            BackendChoice::Process,
            BackendChoice::Microvm,
            BackendChoice::Auto,
        ] {
            assert_eq!(b.as_str().parse::<BackendChoice>(), Ok(b));
        }
        assert_eq!(
            "docker".parse::<BackendChoice>().unwrap_err().to_string(),
            "unknown backend `docker`: use `process`, `microvm` or `auto`"
        );
    }
}
