//! The platform's control plane seen from `stack`: a client for its HTTP API
//! (docs/platform.md) with the admin API key, for the rehearsals. `stack` never needs the
//! platform to run a stack; only the commands that rehearse on it use this.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::exports::{ExportError, Exports};

/// How long one call may take: a move streams a sandbox's disk through S3 twice.
const CALL_TIMEOUT: Duration = Duration::from_secs(1800);

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The stack does not run the platform tier.
    #[error("the stack has no control plane (no service exports {0}): rehearsals need the platform tier; `stack up` the default stack")]
    NoPlatform(&'static str),
    /// An export could not be read.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// No answer.
    #[error("the control plane does not answer {method} {path}: {source}; is it up? `stack status api`, `stack logs api`")]
    Unreachable {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// It answered with an error.
    #[error("{method} {path} answered {status}: {message}")]
    Refused {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The status.
        status: u16,
        /// Its `error`, or the start of its body.
        message: String,
    },
    /// It answered 2xx with something else than the API says.
    #[error("{method} {path} answered something unexpected: {why}")]
    Answer {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// What was wrong.
        why: String,
    },
}

/// A command run in a sandbox that did not exit 0.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{command}` exited {exit_code}: {stderr}")]
pub struct ExecFailed {
    /// The command.
    pub command: String,
    /// Its exit code (-1 when the answer had none).
    pub exit_code: i64,
    /// What it wrote on stderr.
    pub stderr: String,
}

/// A client of the control plane, as the admin.
#[derive(Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    admin: String,
}

impl ControlPlane {
    /// The stack's control plane (`CONTROL_PLANE_URL`) with its admin API key (`ADMIN_API_KEY`).
    pub fn from_exports(exports: &Exports) -> Result<ControlPlane, ApiError> {
        let base = exports
            .get("CONTROL_PLANE_URL")?
            .ok_or(ApiError::NoPlatform("CONTROL_PLANE_URL"))?;
        let admin = exports
            .get("ADMIN_API_KEY")?
            .ok_or(ApiError::NoPlatform("ADMIN_API_KEY"))?;
        Ok(ControlPlane {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            base: format!("{}/api", base.trim_end_matches('/')),
            admin,
        })
    }

    /// The HTTP client (for preview URLs).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
        json: Option<&Value>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .timeout(CALL_TIMEOUT);
        if let Some(j) = json {
            req = req.json(j);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|source| ApiError::Unreachable {
            method: method.to_string(),
            path: path.to_string(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into());
        Err(ApiError::Refused {
            method: method.to_string(),
            path: path.to_string(),
            status,
            message,
        })
    }

    /// A JSON call: `method path` with `body`, its answer as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let resp = self.send(method.clone(), path, None, body).await?;
        resp.json::<T>().await.map_err(|e| ApiError::Answer {
            method: method.to_string(),
            path: path.to_string(),
            why: e.to_string(),
        })
    }

    /// Runs `command` in sandbox `id`: its stdout, or how it failed when it did not exit 0 (the
    /// call itself worked: the outer error is the API's).
    pub async fn exec(
        &self,
        id: &str,
        command: &str,
    ) -> Result<Result<String, ExecFailed>, ApiError> {
        let body = serde_json::json!({ "command": command, "timeout": 600 });
        let out: Value = self
            .call(
                reqwest::Method::POST,
                &format!("/toolbox/{id}/toolbox/process/execute"),
                Some(&body),
            )
            .await?;
        Ok(if out["exitCode"] == 0 {
            Ok(out["result"].as_str().unwrap_or_default().to_string())
        } else {
            Err(ExecFailed {
                command: command.to_string(),
                exit_code: out["exitCode"].as_i64().unwrap_or(-1),
                stderr: out["stderr"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            })
        })
    }

    /// Uploads `bytes` to `path` in sandbox `id`.
    pub async fn upload(&self, id: &str, path: &str, bytes: Vec<u8>) -> Result<(), ApiError> {
        let p = format!("/toolbox/{id}/toolbox/files/upload?path={path}");
        self.send(reqwest::Method::POST, &p, Some(bytes.into()), None)
            .await?;
        Ok(())
    }

    /// Downloads `path` from sandbox `id`.
    pub async fn download(&self, id: &str, path: &str) -> Result<Vec<u8>, ApiError> {
        let p = format!("/toolbox/{id}/toolbox/files/download?path={path}");
        let resp = self.send(reqwest::Method::GET, &p, None, None).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ApiError::Answer {
                method: "GET".into(),
                path: p,
                why: e.to_string(),
            })
    }
}
