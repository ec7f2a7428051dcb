//! Settings of the control plane and the preview proxy, read from their environment (set by
//! their service files from the stack's ports and secrets); every problem names the variable.

use std::time::Duration;

/// A setting that is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("`{0}` is not set: the service file (services/api.yaml, services/proxy.yaml) sets it")]
    Missing(&'static str),
    /// A variable's value cannot be used.
    #[error("`{var}` = `{value}` cannot be used: {why}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        why: &'static str,
    },
}

/// The control plane's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT`: where it listens, on 127.0.0.1.
    pub port: u16,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `OIDC_ISSUER`: tokens' `iss`; keys at `$OIDC_ISSUER/keys`.
    pub oidc_issuer: String,
    /// `OIDC_CLIENT_ID`: tokens' `aud`.
    pub oidc_client_id: String,
    /// `RUNNER_TOKEN`: the secret shared with the runners and the preview proxy.
    pub runner_token: String,
    /// `PREVIEW_URL_BASE`: a URL with `{port}` and `{token}` in it.
    pub preview_url_base: String,
    /// `DEFAULT_IMAGE`: the image of a sandbox created without one.
    pub default_image: String,
    /// `RUNNER_TTL_SECS` (6): a runner silent for longer is unresponsive.
    pub runner_ttl: Duration,
    /// `PREVIEW_TTL_SECS` (3600): how long a signed preview URL works.
    pub preview_ttl: Duration,
}

/// The image a sandbox runs when its creation names none (the base image `stack seed` pushes).
pub const DEFAULT_IMAGE: &str = "boxlite/base:bookworm";

impl Config {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let preview_url_base = required("PREVIEW_URL_BASE")?;
        if !preview_url_base.contains("{token}") {
            return Err(ConfigError::Invalid {
                var: "PREVIEW_URL_BASE",
                value: preview_url_base,
                why: "it must contain `{token}` (and usually `{port}`), e.g. http://{port}-{token}.localhost:28080/",
            });
        }
        Ok(Config {
            port: port()?,
            database_url: required("DATABASE_URL")?,
            redis_url: required("REDIS_URL")?,
            oidc_issuer: required("OIDC_ISSUER")?.trim_end_matches('/').to_string(),
            oidc_client_id: required("OIDC_CLIENT_ID")?,
            runner_token: runner_token()?,
            preview_url_base,
            default_image: optional("DEFAULT_IMAGE").unwrap_or_else(|| DEFAULT_IMAGE.into()),
            runner_ttl: seconds("RUNNER_TTL_SECS", 6)?,
            preview_ttl: seconds("PREVIEW_TTL_SECS", 3600)?,
        })
    }
}

/// The preview proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `PORT`: where it listens, on 127.0.0.1.
    pub port: u16,
    /// `REDIS_URL`: where the preview tokens are.
    pub redis_url: String,
    /// `RUNNER_TOKEN`: presented to the runners.
    pub runner_token: String,
}

impl ProxyConfig {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<ProxyConfig, ConfigError> {
        Ok(ProxyConfig {
            port: port()?,
            redis_url: required("REDIS_URL")?,
            runner_token: runner_token()?,
        })
    }
}

fn optional(var: &'static str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn required(var: &'static str) -> Result<String, ConfigError> {
    optional(var).ok_or(ConfigError::Missing(var))
}

fn port() -> Result<u16, ConfigError> {
    let value = required("PORT")?;
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConfigError::Invalid {
            var: "PORT",
            value,
            why: "it must be a port number (1-65535)",
        }),
    }
}

fn runner_token() -> Result<String, ConfigError> {
    let value = required("RUNNER_TOKEN")?;
    if value.len() < 16 {
        return Err(ConfigError::Invalid {
            var: "RUNNER_TOKEN",
            value: "(hidden)".into(),
            why: "it must be at least 16 characters (the stack generates `${secret.runner-token}`)",
        });
    }
    Ok(value)
}

fn seconds(var: &'static str, default: u64) -> Result<Duration, ConfigError> {
    match optional(var) {
        None => Ok(Duration::from_secs(default)),
        Some(value) => match value.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => Err(ConfigError::Invalid {
                var,
                value,
                why: "it must be a whole number of seconds, at least 1",
            }),
        },
    }
}
