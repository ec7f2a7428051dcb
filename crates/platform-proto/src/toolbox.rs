//! The toolbox: a command run in a sandbox and files written or read in it. The control plane
//! takes the same bodies on `/api/toolbox/...` and forwards them to the sandbox's runner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest a command may run, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// `POST .../process/execute` (control plane) and `POST /sandboxes/{id}/exec` (runner): run
/// `command` with the sandbox's `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell command line.
    pub command: String,
    /// Working directory inside the sandbox (absolute); the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment for this command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds before the command is killed (at most [`MAX_TIMEOUT_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

impl ExecRequest {
    /// Checks `cwd`, `env` and `timeout`; an empty command is refused too.
    pub fn check(&self) -> Result<(), crate::CheckError> {
        if self.command.trim().is_empty() {
            return Err(crate::CheckError::Range {
                field: "command.length",
                value: 0,
                min: 1,
                max: 65536,
            });
        }
        crate::check::range("command.length", self.command.len() as u64, 1, 65536)?;
        if let Some(cwd) = &self.cwd {
            crate::check::absolute_path(cwd)?;
        }
        if let Some(env) = &self.env {
            crate::check::env(env)?;
        }
        if let Some(t) = self.timeout {
            crate::check::range("timeout", t, 1, MAX_TIMEOUT_SECS)?;
        }
        Ok(())
    }
}

/// The answer to an [`ExecRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResponse {
    /// The command's exit code (128 + signal when killed, as a shell reports it).
    pub exit_code: i32,
    /// Its standard output.
    pub result: String,
    /// Its standard error.
    pub stderr: String,
}

/// `?path=/abs` of the file calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// An absolute path inside the sandbox, see [`crate::check::absolute_path`].
    pub path: String,
}

/// The answer to a file upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileWritten {
    /// The path written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_are_camel_case_strict_and_checked() {
        let r: ExecRequest =
            serde_json::from_str(r#"{"command": "uname -n", "cwd": "/tmp", "timeout": 5}"#)
                .unwrap();
        assert!(r.check().is_ok());
        assert!(serde_json::from_str::<ExecRequest>(r#"{"command": "x", "shell": 1}"#).is_err());
        assert!(serde_json::from_str::<ExecRequest>(r#"{"command": 1}"#).is_err());
        let bad = ExecRequest {
            cwd: Some("../etc".into()),
            ..r.clone()
        };
        assert!(bad.check().is_err());
        let out = ExecResponse {
            exit_code: 0,
            result: "x".into(),
            stderr: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"exitCode":0,"result":"x","stderr":""}"#
        );
    }
}
