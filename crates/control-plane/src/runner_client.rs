//! Calls to a runner's HTTP API (docs/platform.md, "Runner HTTP API") with the runner token,
//! and how a runner's failure becomes the caller's answer: unreachable is 503, a refusal for
//! the caller's reason (a bad path, an image that is not there) keeps its 4xx, anything else
//! the runner does wrong is 502; the runner's own message is always passed on.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use platform_proto::{
    BackupMade, BackupRequest, CreateSandbox, ExecRequest, ExecResponse, FileWritten,
    RestoreRequest, RunnerSandbox,
};
use serde::de::DeserializeOwned;

/// A runner as the control plane reaches it.
#[derive(Debug, Clone)]
pub struct RunnerRef {
    /// Its name (`runner-a`).
    pub name: String,
    /// Its base URL (`http://127.0.0.1:23003`).
    pub api_url: String,
}

/// Why a call to a runner failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// No answer (refused, reset, timed out).
    #[error("runner `{runner}` does not answer at {url}: {source}; see `stack logs {runner}`")]
    Unreachable {
        /// The runner.
        runner: String,
        /// What was called.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// It answered with an error.
    #[error("runner `{runner}` answered {status}: {message}")]
    Refused {
        /// The runner.
        runner: String,
        /// Its status.
        status: u16,
        /// Its `error` message, or the start of its body.
        message: String,
    },
    /// It answered 2xx with a body that is not what the contract says.
    #[error("runner `{runner}` answered something unexpected: {why}")]
    Answer {
        /// The runner.
        runner: String,
        /// What was wrong.
        why: String,
    },
}

impl RunnerError {
    /// The status the control plane answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            RunnerError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // 401/403 mean the runner and the control plane disagree on the token: not the
            // caller's fault. Other 4xx are the caller's (a path leaving the root, no image).
            RunnerError::Refused { status, .. }
                if (400..500).contains(status) && *status != 401 && *status != 403 =>
            {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            RunnerError::Refused { .. } | RunnerError::Answer { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Did the runner refuse for the caller's reason (a 4xx it should see)?
    pub fn is_refusal(&self) -> bool {
        self.status().is_client_error()
    }

    /// Did the runner say it does not have the sandbox?
    pub fn is_not_found(&self) -> bool {
        matches!(self, RunnerError::Refused { status: 404, .. })
    }
}

/// How long a call may take: creation pulls images, exec runs commands.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// A backup or a restore streams the sandbox's whole disk through S3 (and a restore may pull
/// its image): minutes for a disk of gigabytes.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(1800);

/// The client the control plane and the preview proxy call runners with.
#[derive(Clone)]
pub struct RunnerClient {
    http: reqwest::Client,
    token: String,
}

impl RunnerClient {
    /// A client presenting `token` over `http`.
    pub fn new(http: reqwest::Client, token: &str) -> RunnerClient {
        RunnerClient {
            http,
            token: token.to_string(),
        }
    }

    /// A request to `path` (starting with `/`) of `runner`, with the runner token.
    pub fn request(
        &self,
        runner: &RunnerRef,
        method: reqwest::Method,
        path: &str,
    ) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", runner.api_url.trim_end_matches('/'));
        let b = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT);
        (url, b)
    }

    /// Sends `req`; a non-2xx answer becomes [`RunnerError::Refused`] with its message.
    pub async fn send(
        &self,
        runner: &RunnerRef,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RunnerError> {
        let resp = req
            .send()
            .await
            .map_err(|source| RunnerError::Unreachable {
                runner: runner.name.clone(),
                url,
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<platform_proto::ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        Err(RunnerError::Refused {
            runner: runner.name.clone(),
            status,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        runner: &RunnerRef,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<T, RunnerError> {
        let resp = self.send(runner, url, req).await?;
        resp.json::<T>().await.map_err(|e| RunnerError::Answer {
            runner: runner.name.clone(),
            why: e.to_string(),
        })
    }

    /// `POST /sandboxes`.
    pub async fn create(
        &self,
        runner: &RunnerRef,
        sandbox: &CreateSandbox,
    ) -> Result<RunnerSandbox, RunnerError> {
        let (url, req) = self.request(runner, reqwest::Method::POST, "/sandboxes");
        self.json(runner, url, req.json(sandbox).timeout(CREATE_TIMEOUT))
            .await
    }

    /// `POST /sandboxes/restore`: installs the archive `req.key` as sandbox `req.id`.
    pub async fn restore(
        &self,
        runner: &RunnerRef,
        req: &RestoreRequest,
    ) -> Result<RunnerSandbox, RunnerError> {
        let (url, b) = self.request(runner, reqwest::Method::POST, "/sandboxes/restore");
        self.json(runner, url, b.json(req).timeout(ARCHIVE_TIMEOUT))
            .await
    }

    /// The calls about sandbox `id` on `runner`.
    pub fn sandbox<'a>(&'a self, runner: &'a RunnerRef, id: &'a str) -> OnRunner<'a> {
        OnRunner {
            client: self,
            runner,
            id,
        }
    }
}

/// One sandbox on its runner: the runner API's `/sandboxes/{id}/...` calls.
pub struct OnRunner<'a> {
    client: &'a RunnerClient,
    runner: &'a RunnerRef,
    id: &'a str,
}

impl OnRunner<'_> {
    /// A request to `/sandboxes/{id}{suffix}`.
    fn at(&self, method: reqwest::Method, suffix: &str) -> (String, reqwest::RequestBuilder) {
        let path = format!("/sandboxes/{}{suffix}", self.id);
        self.client.request(self.runner, method, &path)
    }

    /// `POST /sandboxes/{id}/start` or `/stop` (`action`).
    pub async fn lifecycle(&self, action: &str) -> Result<RunnerSandbox, RunnerError> {
        let (url, req) = self.at(reqwest::Method::POST, &format!("/{action}"));
        self.client.json(self.runner, url, req).await
    }

    /// `GET /sandboxes/{id}`: the sandbox as its runner has it.
    pub async fn get(&self) -> Result<RunnerSandbox, RunnerError> {
        let (url, req) = self.at(reqwest::Method::GET, "");
        self.client.json(self.runner, url, req).await
    }

    /// `POST /sandboxes/{id}/backup`: its archive, complete in S3.
    pub async fn backup(&self, req: &BackupRequest) -> Result<BackupMade, RunnerError> {
        let (url, b) = self.at(reqwest::Method::POST, "/backup");
        self.client
            .json(self.runner, url, b.json(req).timeout(ARCHIVE_TIMEOUT))
            .await
    }

    /// `DELETE /sandboxes/{id}`; a sandbox the runner does not have is already deleted.
    pub async fn delete(&self) -> Result<(), RunnerError> {
        let (url, req) = self.at(reqwest::Method::DELETE, "");
        match self.client.send(self.runner, url, req).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /sandboxes/{id}/exec`, waiting as long as the command may run.
    pub async fn exec(&self, exec: &ExecRequest) -> Result<ExecResponse, RunnerError> {
        let (url, req) = self.at(reqwest::Method::POST, "/exec");
        let wait = Duration::from_secs(exec.timeout.unwrap_or(60) + 15);
        let req = req.json(exec).timeout(wait);
        self.client.json(self.runner, url, req).await
    }

    /// `PUT /sandboxes/{id}/files?path=`.
    pub async fn put_file(&self, path: &str, bytes: Bytes) -> Result<FileWritten, RunnerError> {
        let (url, req) = self.at(reqwest::Method::PUT, "/files");
        let req = req.query(&[("path", path)]).body(bytes);
        self.client.json(self.runner, url, req).await
    }

    /// `GET /sandboxes/{id}/files?path=`: the file's bytes.
    pub async fn get_file(&self, path: &str) -> Result<Bytes, RunnerError> {
        let (url, req) = self.at(reqwest::Method::GET, "/files");
        let req = req.query(&[("path", path)]);
        let resp = self.client.send(self.runner, url, req).await?;
        resp.bytes().await.map_err(|e| RunnerError::Answer {
            runner: self.runner.name.clone(),
            why: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> RunnerError {
        RunnerError::Refused {
            runner: "runner-a".into(),
            status,
            message: "m".into(),
        }
    }

    #[test]
    fn a_runner_refusal_keeps_the_callers_4xx_and_the_rest_is_a_bad_gateway() {
        assert_eq!(refused(404).status(), StatusCode::NOT_FOUND);
        assert_eq!(refused(400).status(), StatusCode::BAD_REQUEST);
        assert!(refused(404).is_refusal() && refused(404).is_not_found());
        // A token the runner refuses is the control plane's problem, not the caller's.
        assert_eq!(refused(401).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused(403).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused(500).status(), StatusCode::BAD_GATEWAY);
        assert!(!refused(500).is_refusal());
    }
}
