//! The preview proxy (`preview-proxy`): Caddy sends every preview host's request here with
//! `X-Preview-Port` and `X-Preview-Token`; a token that Redis does not hold (unknown, expired)
//! or that was issued for another port is 404 and never forwarded; otherwise the request goes
//! to `{runner}/sandboxes/{id}/ports/{port}/{path}` with the runner token, and the runner's
//! answer comes back. Bodies are buffered (previews are pages and API calls, not streams).
//! Without the preview headers, `GET /health` is the proxy's own health check.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::cache::Cache;
use crate::config::ProxyConfig;
use crate::error::{error_response, StartError};
use crate::runner_client::{RunnerClient, RunnerRef};

/// The most a forwarded request body may be.
pub const BODY_LIMIT: usize = 16 << 20;

/// What every forwarded request needs.
#[derive(Clone)]
pub struct ProxyState {
    cache: Cache,
    runners: RunnerClient,
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
/// ones the proxy sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-preview-port",
    "x-preview-token",
];

fn forwardable(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str())
}

/// The proxy's router: every path and method goes to [`forward`].
pub fn router(state: ProxyState) -> Router {
    Router::new().fallback(forward).with_state(state)
}

/// Listens on 127.0.0.1:`config.port` until SIGTERM.
pub async fn serve(config: ProxyConfig) -> Result<(), StartError> {
    let cache = Cache::new(&config.redis_url).map_err(StartError::Redis)?;
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(StartError::Http)?;
    let state = ProxyState {
        cache,
        runners: RunnerClient::new(http, &config.runner_token),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .map_err(|source| StartError::Bind {
            port: config.port,
            source,
        })?;
    eprintln!("preview-proxy: listening on 127.0.0.1:{}", config.port);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .map_err(StartError::Serve)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Forwards one preview request, or answers why it cannot.
pub async fn forward(State(state): State<ProxyState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (Some(raw_port), Some(token)) = (
        header(&parts.headers, "x-preview-port"),
        header(&parts.headers, "x-preview-token"),
    ) else {
        if parts.uri.path() == "/health" {
            return axum::Json(serde_json::json!({ "status": "ok" })).into_response();
        }
        return error_response(
            StatusCode::BAD_REQUEST,
            "not a preview request: Caddy's preview route sets X-Preview-Port and X-Preview-Token (open http://<port>-<token>.localhost:<caddy port>/)".into(),
        );
    };
    let unknown = || {
        error_response(
            StatusCode::NOT_FOUND,
            "unknown or expired preview token: ask the API for a new signed preview URL".into(),
        )
    };
    let Ok(port) = raw_port.parse::<u16>() else {
        return unknown();
    };
    let grant = match crate::previews::resolve(&state.cache, token).await {
        Ok(Some(g)) if g.port == port => g,
        Ok(_) => return unknown(),
        Err(e) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("redis is unavailable: {e}; is it up? try `stack up redis`"),
            )
        }
    };
    let body = match to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request bodies through a preview are limited to {BODY_LIMIT} bytes"),
            )
        }
    };
    let runner = RunnerRef {
        name: grant.runner.clone(),
        api_url: grant.runner_url.clone(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = format!(
        "/sandboxes/{}/ports/{}/{}",
        grant.sandbox_id,
        grant.port,
        path_and_query.trim_start_matches('/')
    );
    let (url, mut rb) = state.runners.request(&runner, parts.method.clone(), &path);
    for (name, value) in parts.headers.iter().filter(|(n, _)| forwardable(n)) {
        rb = rb.header(name, value);
    }
    if let Some(host) = parts.headers.get("host") {
        rb = rb.header("x-forwarded-host", host);
    }
    // Not `send`: the sandbox's own error answers (404, 500) are passed on as they are.
    let resp = match rb.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                format!("runner `{}` does not answer at {url}: {e}", grant.runner),
            )
        }
    };
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for (name, value) in resp.headers().iter().filter(|(n, _)| forwardable(n)) {
        headers.append(name, value.clone());
    }
    match resp.bytes().await {
        Ok(bytes) => (status, headers, Body::from(bytes)).into_response(),
        Err(e) => error_response(
            StatusCode::BAD_GATEWAY,
            format!("runner `{}` broke off its answer: {e}", grant.runner),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_credentials_are_not_forwarded() {
        for name in [
            "connection",
            "host",
            "authorization",
            "x-preview-token",
            "transfer-encoding",
        ] {
            assert!(!forwardable(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["accept", "cookie", "content-type", "x-forwarded-for"] {
            assert!(forwardable(&HeaderName::from_static(name)), "{name}");
        }
    }
}
