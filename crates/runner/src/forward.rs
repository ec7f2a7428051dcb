//! `ANY /sandboxes/{id}/ports/{port}/{path...}`: one HTTP/1.1 request forwarded to a port inside
//! a sandbox's own network namespace (a connection opened there by the driver) and its answer
//! streamed back as it comes. The runner token never reaches the sandbox.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use crate::error::ApiError;
use crate::sandboxes::Sandboxes;

/// How long the sandbox has to start answering (its body may then stream for as long as it
/// takes).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers of one connection, not of the request (RFC 9110 section 7.6.1), and the runner's own
/// credentials.
const DROPPED: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::AUTHORIZATION,
];

fn strip_hop_headers(headers: &mut HeaderMap) {
    // Headers the `Connection` header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in DROPPED.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// Forwards `req` to `port` of sandbox `id`, as a request for `/{path}` (query kept).
pub async fn forward(
    sandboxes: &Sandboxes,
    id: &str,
    port: &str,
    path: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let sandbox = sandbox::SandboxId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "`{port}` is not a port number (1-65535)"
            )))
        }
    };
    let fail = |reason: String| ApiError::Forward {
        id: id.to_string(),
        port,
        reason,
    };
    let (mut parts, body) = req.into_parts();
    let target = match parts.uri.query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    parts.uri = target
        .parse::<Uri>()
        .map_err(|e| ApiError::BadRequest(format!("cannot forward to `{target}`: {e}")))?;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_headers(&mut parts.headers);
    if let Some(host) = parts.headers.remove(header::HOST) {
        parts.headers.insert("x-forwarded-host", host);
    }
    let host = HeaderValue::from_str(&format!("127.0.0.1:{port}"))
        .map_err(|e| fail(format!("bad host header: {e}")))?;
    parts.headers.insert(header::HOST, host);

    let stream = sandboxes.connect(&sandbox, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(format!("HTTP handshake failed: {e}")))?;
    // The connection task ends when the answer's body has been read (or dropped).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| fail(format!("no answer within {ANSWER_TIMEOUT:?}")))?
    .map_err(|e| fail(format!("the request failed: {e}")))?;
    let (mut parts, body) = answer.into_parts();
    strip_hop_headers(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}
