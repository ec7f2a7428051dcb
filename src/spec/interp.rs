//! `${VAR}` interpolation: environment and `.env` values, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, the stack's own variables (`${port.NAME}`, `${data_dir}`, `${state_dir}`,
//! `${project_dir}`) and `$$` for a literal dollar.

use std::collections::BTreeMap;

/// Values only the backend knows, filled into `configs:` when a service starts:
/// - `${backend.bind}`: the address a server listens on: `127.0.0.1` as a process, `0.0.0.0`
///   inside a box (only its published ports reach it, and those listen on host loopback);
/// - `${backend.host}`: where it reaches the stack's other services: `127.0.0.1` as a process,
///   BoxLite's `host.boxlite.internal` (the host's loopback) inside a box.
pub const BACKEND_VARS: &[&str] = &["backend.bind", "backend.host"];

/// The backend's values for [`BACKEND_VARS`].
#[derive(Debug, Clone, Copy)]
pub struct BackendVars {
    /// `${backend.bind}`.
    pub bind: &'static str,
    /// `${backend.host}`.
    pub host: &'static str,
}

impl BackendVars {
    /// A native process: everything on loopback.
    pub const PROCESS: BackendVars = BackendVars {
        bind: "127.0.0.1",
        host: "127.0.0.1",
    };
}

/// Fills `${backend.bind}` and `${backend.host}` in a rendered config.
pub fn fill_backend(text: &str, vars: BackendVars) -> String {
    text.replace("${backend.bind}", vars.bind)
        .replace("${backend.host}", vars.host)
}

/// Why a `${...}` reference could not be expanded; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpError {
    /// A `${` without its `}`.
    #[error("unclosed `${{` in `{input}`: add the closing `}}`")]
    Unclosed {
        /// The whole text being expanded.
        input: String,
    },
    /// `${}` or a name with characters a variable cannot have.
    #[error("`${{{body}}}` is not a valid variable reference")]
    InvalidReference {
        /// What stood between the braces.
        body: String,
    },
    /// `${NAME:?message}` (or `${NAME?message}`) with `NAME` unset (or empty).
    #[error("`{name}` is required: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The text after `:?`, written by the stack's author.
        message: String,
    },
    /// `${port.NAME}` where the service has no port `NAME`.
    #[error("`${{port.{port}}}` names no port of this service: add `{port}` under `ports:`")]
    UnknownPort {
        /// The port name after `port.`.
        port: String,
    },
    /// A variable set nowhere, without a default.
    #[error(
        "variable `{name}` is not set: export it, add it to the env_file, or write `${{{name}:-default}}`"
    )]
    Unset {
        /// The variable.
        name: String,
    },
}

/// The variables visible to one service's definition.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// Environment: the process environment over `.env` (compose precedence).
    pub env: BTreeMap<String, String>,
    /// The stack's own variables (`port.http`, `data_dir`, ...); they shadow the environment.
    pub own: BTreeMap<String, String>,
}

/// Which `${...}` an expansion leaves in place, to be filled later.
#[derive(Clone, Copy)]
enum Keep {
    Nothing,
    Secrets,
    SecretsAndBackend,
}

impl Vars {
    /// Expands every `${...}` in `input`; the error says which variable and what to do.
    pub fn expand(&self, input: &str) -> Result<String, InterpError> {
        self.expand_with(input, Keep::Nothing)
    }

    /// Like [`Vars::expand`] but leaves `${secret.NAME}` and the backend's `${backend.bind}` and
    /// `${backend.host}` in place, to be filled at start time (see [`fill_backend`]).
    pub fn expand_keeping_secrets(&self, input: &str) -> Result<String, InterpError> {
        self.expand_with(input, Keep::SecretsAndBackend)
    }

    /// Like [`Vars::expand`] but leaves `${secret.NAME}` in place, for `environment:` values: the
    /// backend fills them when it starts the service (see [`crate::secrets::fill_env`]).
    pub fn expand_keeping_only_secrets(&self, input: &str) -> Result<String, InterpError> {
        self.expand_with(input, Keep::Secrets)
    }

    fn expand_with(&self, input: &str, keep: Keep) -> Result<String, InterpError> {
        let mut out = String::with_capacity(input.len());
        let mut rest = input;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body_start) = after.strip_prefix('{') {
                let end = body_start.find('}').ok_or_else(|| InterpError::Unclosed {
                    input: input.to_string(),
                })?;
                let body = &body_start[..end];
                let kept = match keep {
                    Keep::Nothing => false,
                    Keep::Secrets => body.starts_with("secret."),
                    Keep::SecretsAndBackend => {
                        body.starts_with("secret.") || BACKEND_VARS.contains(&body)
                    }
                };
                if kept {
                    out.push_str("${");
                    out.push_str(body);
                    out.push('}');
                } else {
                    out.push_str(&self.resolve(body)?);
                }
                rest = &body_start[end + 1..];
            } else {
                // A bare `$NAME` is left alone: commands often carry shell-like text on purpose.
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn lookup(&self, name: &str) -> Option<&str> {
        self.own
            .get(name)
            .or_else(|| self.env.get(name))
            .map(String::as_str)
    }

    fn resolve(&self, body: &str) -> Result<String, InterpError> {
        let (name, op, arg) = split_body(body);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(InterpError::InvalidReference {
                body: body.to_string(),
            });
        }
        let value = self.lookup(name);
        match (op, value) {
            (":-", Some(v)) if !v.is_empty() => Ok(v.to_string()),
            (":-", _) => Ok(arg.to_string()),
            ("-", Some(v)) => Ok(v.to_string()),
            ("-", None) => Ok(arg.to_string()),
            (":?" | "?", Some(v)) if op == "?" || !v.is_empty() => Ok(v.to_string()),
            (":?" | "?", _) => Err(InterpError::Required {
                name: name.to_string(),
                message: arg.to_string(),
            }),
            (_, Some(v)) => Ok(v.to_string()),
            (_, None) => Err(match name.strip_prefix("port.") {
                Some(port) => InterpError::UnknownPort {
                    port: port.to_string(),
                },
                None => InterpError::Unset {
                    name: name.to_string(),
                },
            }),
        }
    }
}

fn split_body(body: &str) -> (&str, &str, &str) {
    for op in [":-", ":?", "-", "?"] {
        if let Some(i) = body.find(op) {
            // The earliest operator wins, so `${A-b:-c}` splits at `-`.
            let earlier = [":-", ":?", "-", "?"]
                .iter()
                .filter_map(|o| body.find(o))
                .min()
                .unwrap_or(i);
            if earlier == i {
                return (&body[..i], op, &body[i + op.len()..]);
            }
        }
    }
    (body, "", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.env.insert("HOST".into(), "127.0.0.1".into());
        v.env.insert("EMPTY".into(), String::new());
        v.own.insert("port.http".into(), "28090".into());
        v
    }

    #[test]
    fn expands_env_own_defaults_and_escapes() {
        let v = vars();
        assert_eq!(
            v.expand("http://${HOST}:${port.http}/").unwrap(),
            "http://127.0.0.1:28090/"
        );
        assert_eq!(v.expand("${MISSING:-x}").unwrap(), "x");
        assert_eq!(v.expand("${EMPTY:-x}").unwrap(), "x");
        assert_eq!(v.expand("${EMPTY-x}").unwrap(), "");
        assert_eq!(v.expand("${MISSING-a-b}").unwrap(), "a-b");
        assert_eq!(v.expand("cost $$5 and $HOME").unwrap(), "cost $5 and $HOME");
    }

    #[test]
    fn unset_and_required_variables_are_errors_with_a_remedy() {
        let v = vars();
        let e = v.expand("${NOPE}").unwrap_err().to_string();
        assert!(
            e.contains("`NOPE` is not set") && e.contains(":-default"),
            "{e}"
        );
        let e = v.expand("${port.grpc}").unwrap_err().to_string();
        assert!(e.contains("add `grpc` under `ports:`"), "{e}");
        let e = v
            .expand("${NOPE:?set NOPE to the token}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("set NOPE to the token"), "{e}");
        assert!(v.expand("${unclosed").is_err());
        assert!(v.expand("${}").is_err());
    }

    /// The typed errors keep the exact text users read today.
    #[test]
    fn each_error_renders_its_remedy() {
        let v = vars();
        let text = |input: &str| v.expand(input).unwrap_err().to_string();
        assert_eq!(
            text("a ${unclosed"),
            "unclosed `${` in `a ${unclosed`: add the closing `}`"
        );
        assert_eq!(text("${}"), "`${}` is not a valid variable reference");
        assert_eq!(text("${A B}"), "`${A B}` is not a valid variable reference");
        assert_eq!(text("${EMPTY:?give it}"), "`EMPTY` is required: give it");
        assert_eq!(
            text("${port.grpc}"),
            "`${port.grpc}` names no port of this service: add `grpc` under `ports:`"
        );
        assert_eq!(
            text("${NOPE}"),
            "variable `NOPE` is not set: export it, add it to the env_file, or write `${NOPE:-default}`"
        );
    }

    #[test]
    fn backend_values_wait_for_the_backend_and_are_filled_at_start() {
        let v = vars();
        assert_eq!(
            v.expand_keeping_only_secrets("${HOST}:${port.http} ${secret.runner-token}$$")
                .unwrap(),
            "127.0.0.1:28090 ${secret.runner-token}$"
        );
        assert!(v
            .expand_keeping_only_secrets("${secret.x}${backend.bind}")
            .is_err());
        let tpl = "bind ${backend.bind}:${port.http} to ${backend.host}:1 ${secret.k}";
        let kept = v.expand_keeping_secrets(tpl).unwrap();
        assert_eq!(
            kept,
            "bind ${backend.bind}:28090 to ${backend.host}:1 ${secret.k}"
        );
        assert!(
            v.expand(tpl).is_err(),
            "outside config templates they are not variables"
        );
        assert_eq!(
            fill_backend(&kept, BackendVars::PROCESS),
            "bind 127.0.0.1:28090 to 127.0.0.1:1 ${secret.k}"
        );
        let boxed = BackendVars {
            bind: "0.0.0.0",
            host: "host.boxlite.internal",
        };
        assert_eq!(
            fill_backend(&kept, boxed),
            "bind 0.0.0.0:28090 to host.boxlite.internal:1 ${secret.k}"
        );
    }
}
