//! The documented exit codes of `stack`.

/// How a `stack` command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: everything asked for was done.
    Ok,
    /// 1: some other failure (I/O, a backend error).
    Failure,
    /// 2: invalid stack definition or usage.
    Invalid,
    /// 3: a half-applied schema was refused.
    SchemaRefused,
    /// 4: preflight failed (port in use, program missing).
    Preflight,
    /// 5: a service did not become healthy (or its init or build failed).
    Unhealthy,
    /// 130: interrupted by Ctrl-C.
    Interrupted,
}

impl ExitStatus {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failure => 1,
            Self::Invalid => 2,
            Self::SchemaRefused => 3,
            Self::Preflight => 4,
            Self::Unhealthy => 5,
            Self::Interrupted => 130,
        }
    }
}

/// The exit code table, as printed at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    ok
  1    other failure
  2    invalid stack definition or usage
  3    half-applied schema refused
  4    preflight failed (port in use, program missing)
  5    a service did not become healthy, or a build failed
  130  interrupted";
