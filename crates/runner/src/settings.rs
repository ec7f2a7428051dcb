//! The runner's settings, read once from its environment (set by its service file) and checked
//! all together: a runner with one missing or malformed variable refuses to start and says which.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::choice::DriverSetting;

/// Sandboxes a runner takes when `RUNNER_CAPACITY` is not set.
pub const DEFAULT_CAPACITY: usize = 20;
/// The bucket of backups when `RUNNER_BACKUP_BUCKET` is not set.
pub const DEFAULT_BACKUP_BUCKET: &str = "backups";
/// Backups kept per sandbox when `RUNNER_BACKUP_KEEP` is not set.
pub const DEFAULT_BACKUP_KEEP: usize = 3;
/// The S3 settings, all given or none.
const S3_VARS: [&str; 4] = [
    "RUNNER_S3_ENDPOINT",
    "RUNNER_S3_REGION",
    "RUNNER_S3_ACCESS_KEY_ID",
    "RUNNER_S3_SECRET_ACCESS_KEY",
];

/// Where sandbox backups go (`RUNNER_S3_*`, `RUNNER_BACKUP_*`).
#[derive(Clone)]
pub struct BackupSettings {
    /// `RUNNER_S3_ENDPOINT`: `http://host:port`, path-style.
    pub endpoint: String,
    /// `RUNNER_S3_REGION`: the region requests are signed for.
    pub region: String,
    /// `RUNNER_S3_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `RUNNER_S3_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// `RUNNER_BACKUP_BUCKET` (default [`DEFAULT_BACKUP_BUCKET`]).
    pub bucket: String,
    /// `RUNNER_BACKUP_KEEP`: backups kept per sandbox, 1 to 100 (default [`DEFAULT_BACKUP_KEEP`]).
    pub keep: usize,
}

impl fmt::Debug for BackupSettings {
    /// Everything but the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupSettings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("bucket", &self.bucket)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// Everything the runner reads from its environment.
#[derive(Clone)]
pub struct Settings {
    /// `RUNNER_NAME`: its name at the control plane (a DNS label).
    pub name: String,
    /// `RUNNER_PORT`: where it listens, on 127.0.0.1 only.
    pub port: u16,
    /// `RUNNER_HOME`: its image cache, sandboxes and runc state.
    pub home: PathBuf,
    /// `RUNNER_TOKEN`: the shared secret, both ways.
    pub token: String,
    /// `CONTROL_PLANE_URL`: where it registers and heartbeats, without a trailing `/`.
    pub control_plane: String,
    /// `REGISTRY_URL`'s `host:port`: where images come from.
    pub registry: String,
    /// `RUNNER_CAPACITY`: most sandboxes at once (default [`DEFAULT_CAPACITY`]).
    pub capacity: usize,
    /// `RUNNER_OUTBOUND`: `on` gives new sandboxes outbound network access (slirp4netns), `off`
    /// (the default) leaves every sandbox with `lo` only.
    pub outbound: sandbox::Outbound,
    /// `RUNNER_DRIVER`: `auto` (default), `runc` or `microvm` (see `choice`).
    pub driver: DriverSetting,
    /// `RUNNER_BOOT_PROBE`: the boot probe's verdict file `stack` caches, absolute (optional).
    pub boot_probe: Option<PathBuf>,
    /// Backups to S3: `None` when no `RUNNER_S3_*` is set (the backup routes answer 503).
    pub backups: Option<BackupSettings>,
}

impl fmt::Debug for Settings {
    /// Everything but the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("home", &self.home)
            .field("control_plane", &self.control_plane)
            .field("registry", &self.registry)
            .field("capacity", &self.capacity)
            .field("outbound", &self.outbound)
            .field("driver", &self.driver)
            .field("boot_probe", &self.boot_probe)
            .field("backups", &self.backups)
            .finish_non_exhaustive()
    }
}

/// Every problem found in the environment, one line each.
#[derive(Debug, thiserror::Error)]
#[error("cannot start: {}\nhelp: the runner's service file (services/runner-a.yaml) sets these in `environment:`", .0.join("; "))]
pub struct SettingsError(pub Vec<String>);

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads the settings from `vars`, reporting every problem at once.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        let mut problems = Vec::new();
        let mut get = |key: &str, check: &dyn Fn(&str) -> Result<(), String>| -> String {
            match vars.get(key).map(|v| v.trim()) {
                None | Some("") => {
                    problems.push(format!("`{key}` is not set"));
                    String::new()
                }
                Some(v) => match check(v) {
                    Ok(()) => v.to_string(),
                    Err(why) => {
                        problems.push(format!("`{key}` {why}"));
                        String::new()
                    }
                },
            }
        };
        let name = get("RUNNER_NAME", &|v| {
            sandbox::SandboxId::parse(v)
                .map(drop)
                .map_err(|_| format!("is `{v}`: use 1 to 63 of `a-z`, `0-9` and `-`"))
        });
        let port = get("RUNNER_PORT", &|v| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => Err(format!("is `{v}`: not a port number (1-65535)")),
        });
        let home = get("RUNNER_HOME", &|v| {
            if v.starts_with('/') {
                Ok(())
            } else {
                Err(format!("is `{v}`: must be an absolute path"))
            }
        });
        let token = get("RUNNER_TOKEN", &|v| {
            if v.len() >= 16 {
                Ok(())
            } else {
                Err("is shorter than 16 characters".into())
            }
        });
        let control_plane = get("CONTROL_PLANE_URL", &|v| http_base(v).map(drop));
        let registry = get("REGISTRY_URL", &|v| {
            let base = http_base(v)?;
            if base.path() == "/" {
                Ok(())
            } else {
                Err(format!(
                    "is `{v}`: a registry is served at its root, give no path"
                ))
            }
        });
        let capacity = match vars.get("RUNNER_CAPACITY").map(|v| v.trim()) {
            None | Some("") => DEFAULT_CAPACITY,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "`RUNNER_CAPACITY` is `{v}`: give a number of sandboxes from 1 to 1000"
                    ));
                    0
                }
            },
        };
        let outbound = match vars.get("RUNNER_OUTBOUND").map(|v| v.trim()) {
            None | Some("") => sandbox::Outbound::Off,
            Some(v) => sandbox::Outbound::parse(v).unwrap_or_else(|| {
                problems.push(format!(
                    "`RUNNER_OUTBOUND` is `{v}`: give `off` (the default: sandboxes have no network out) or `on` (outbound access through slirp4netns, never to the host's loopback)"
                ));
                sandbox::Outbound::Off
            }),
        };
        let driver = match vars.get("RUNNER_DRIVER").map(|v| v.trim()) {
            None | Some("") => DriverSetting::Auto,
            Some(v) => DriverSetting::parse(v).unwrap_or_else(|| {
                problems.push(format!(
                    "`RUNNER_DRIVER` is `{v}`: give `auto`, `runc` or `microvm`"
                ));
                DriverSetting::Auto
            }),
        };
        let boot_probe = match vars.get("RUNNER_BOOT_PROBE").map(|v| v.trim()) {
            None | Some("") => None,
            Some(v) if v.starts_with('/') => Some(PathBuf::from(v)),
            Some(v) => {
                problems.push(format!(
                    "`RUNNER_BOOT_PROBE` is `{v}`: must be an absolute path"
                ));
                None
            }
        };
        let backups = backup_settings(vars, &mut problems);
        if !problems.is_empty() {
            return Err(SettingsError(problems));
        }
        let registry = http_base(&registry)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_default();
        Ok(Self {
            name,
            port: port.parse().unwrap_or_default(),
            home: PathBuf::from(home),
            token,
            control_plane: control_plane.trim_end_matches('/').to_string(),
            registry,
            capacity,
            outbound,
            driver,
            boot_probe,
            backups,
        })
    }
}

/// The backup settings: all four `RUNNER_S3_*` or none (then `None`); problems go to `problems`.
fn backup_settings(
    vars: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<BackupSettings> {
    let value = |key: &str| vars.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let given: Vec<&str> = S3_VARS.into_iter().filter(|k| value(k).is_some()).collect();
    if given.is_empty() {
        return None;
    }
    let missing: Vec<String> = S3_VARS
        .into_iter()
        .filter(|k| value(k).is_none())
        .map(|k| format!("`{k}`"))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} not set while {} is: backups need all four RUNNER_S3_* settings (or none, to have no backups)",
            missing.join(", "),
            given.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let endpoint = value("RUNNER_S3_ENDPOINT").unwrap_or_default();
    if !endpoint.is_empty() {
        if let Err(why) = http_base(endpoint) {
            problems.push(format!("`RUNNER_S3_ENDPOINT` {why}"));
        }
    }
    let bucket = value("RUNNER_BACKUP_BUCKET").unwrap_or(DEFAULT_BACKUP_BUCKET);
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        problems.push(format!(
            "`RUNNER_BACKUP_BUCKET` is `{bucket}`: an S3 bucket name is 3 to 63 of `a-z`, `0-9`, `-` and `.`"
        ));
    }
    let keep = match value("RUNNER_BACKUP_KEEP") {
        None => DEFAULT_BACKUP_KEEP,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                problems.push(format!(
                    "`RUNNER_BACKUP_KEEP` is `{v}`: give the number of backups kept per sandbox, 1 to 100"
                ));
                DEFAULT_BACKUP_KEEP
            }
        },
    };
    Some(BackupSettings {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        region: value("RUNNER_S3_REGION").unwrap_or_default().to_string(),
        access_key: value("RUNNER_S3_ACCESS_KEY_ID")
            .unwrap_or_default()
            .to_string(),
        secret_key: value("RUNNER_S3_SECRET_ACCESS_KEY")
            .unwrap_or_default()
            .to_string(),
        bucket: bucket.to_string(),
        keep,
    })
}

/// An `http://` URL with a host.
fn http_base(v: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(v) {
        Ok(u) if u.scheme() == "http" && u.host_str().is_some() => Ok(u),
        Ok(_) => Err(format!("is `{v}`: give an `http://host:port` URL")),
        Err(e) => Err(format!("is `{v}`: not a URL ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn good() -> BTreeMap<String, String> {
        vars(&[
            ("RUNNER_NAME", "runner-a"),
            ("RUNNER_PORT", "23003"),
            ("RUNNER_HOME", "/var/lib/runner-a"),
            ("RUNNER_TOKEN", "0123456789abcdef0123"),
            ("CONTROL_PLANE_URL", "http://127.0.0.1:23001/"),
            ("REGISTRY_URL", "http://127.0.0.1:25000"),
        ])
    }

    #[test]
    fn reads_a_complete_environment() {
        let s = Settings::from_vars(&good()).expect("valid");
        assert_eq!(
            (s.name.as_str(), s.port, s.capacity),
            ("runner-a", 23003, DEFAULT_CAPACITY)
        );
        assert_eq!(s.control_plane, "http://127.0.0.1:23001");
        assert_eq!(s.registry, "127.0.0.1:25000");
        assert_eq!(s.outbound, sandbox::Outbound::Off, "off by default");
        assert_eq!(
            (s.driver, s.boot_probe.as_deref()),
            (DriverSetting::Auto, None)
        );
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "token hidden"
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut v = good();
        v.remove("RUNNER_TOKEN");
        v.insert("RUNNER_PORT".into(), "70000".into());
        v.insert(
            "REGISTRY_URL".into(),
            "http://127.0.0.1:25000/registry/".into(),
        );
        v.insert("RUNNER_HOME".into(), "relative".into());
        v.insert("RUNNER_CAPACITY".into(), "0".into());
        v.insert("CONTROL_PLANE_URL".into(), "https://x".into());
        v.insert("RUNNER_NAME".into(), "Runner A".into());
        v.insert("RUNNER_OUTBOUND".into(), "yes".into());
        v.insert("RUNNER_DRIVER".into(), "boxlite".into());
        v.insert("RUNNER_BOOT_PROBE".into(), "boot-probe.json".into());
        let e = Settings::from_vars(&v).expect_err("invalid").0;
        let text = e.join("\n");
        for key in [
            "`RUNNER_TOKEN` is not set",
            "`RUNNER_PORT` is `70000`",
            "`REGISTRY_URL`",
            "`RUNNER_HOME`",
            "`RUNNER_CAPACITY`",
            "`CONTROL_PLANE_URL`",
            "`RUNNER_NAME`",
            "`RUNNER_OUTBOUND` is `yes`: give `off`",
            "`RUNNER_DRIVER` is `boxlite`: give `auto`, `runc` or `microvm`",
            "`RUNNER_BOOT_PROBE` is `boot-probe.json`: must be an absolute path",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        assert_eq!(e.len(), 10);
    }

    #[test]
    fn backups_are_all_s3_settings_or_none() {
        let s = Settings::from_vars(&good()).expect("valid");
        assert!(s.backups.is_none(), "no RUNNER_S3_*: no backups");
        let mut v = good();
        v.insert(
            "RUNNER_S3_ENDPOINT".into(),
            "http://127.0.0.1:29000/".into(),
        );
        v.insert("RUNNER_S3_REGION".into(), "us-east-1".into());
        v.insert(
            "RUNNER_S3_ACCESS_KEY_ID".into(),
            "GKb0c511e0000000000000000d".into(),
        );
        v.insert("RUNNER_S3_SECRET_ACCESS_KEY".into(), "b0c511e0".repeat(8));
        let b = Settings::from_vars(&v)
            .expect("valid")
            .backups
            .expect("backups");
        assert_eq!(
            (b.endpoint.as_str(), b.bucket.as_str(), b.keep),
            (
                "http://127.0.0.1:29000",
                DEFAULT_BACKUP_BUCKET,
                DEFAULT_BACKUP_KEEP
            )
        );
        assert!(
            !format!("{b:?}").contains("b0c511e0b0c511e0"),
            "secret hidden"
        );
        v.insert("RUNNER_BACKUP_KEEP".into(), "7".into());
        v.insert("RUNNER_BACKUP_BUCKET".into(), "box-backups".into());
        let b = Settings::from_vars(&v)
            .expect("valid")
            .backups
            .expect("backups");
        assert_eq!((b.bucket.as_str(), b.keep), ("box-backups", 7));

        v.remove("RUNNER_S3_REGION");
        v.remove("RUNNER_S3_SECRET_ACCESS_KEY");
        v.insert("RUNNER_BACKUP_KEEP".into(), "0".into());
        v.insert("RUNNER_BACKUP_BUCKET".into(), "Backups".into());
        let e = Settings::from_vars(&v).expect_err("partial").0;
        let text = e.join("\n");
        for key in [
            "`RUNNER_S3_REGION`, `RUNNER_S3_SECRET_ACCESS_KEY` not set while `RUNNER_S3_ENDPOINT`, `RUNNER_S3_ACCESS_KEY_ID` is",
            "`RUNNER_BACKUP_KEEP` is `0`",
            "`RUNNER_BACKUP_BUCKET` is `Backups`",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn outbound_is_off_or_on() {
        for (value, outbound) in [
            ("on", sandbox::Outbound::On),
            ("off", sandbox::Outbound::Off),
            ("", sandbox::Outbound::Off),
        ] {
            let mut v = good();
            v.insert("RUNNER_OUTBOUND".into(), value.into());
            let s = Settings::from_vars(&v).expect("valid");
            assert_eq!(s.outbound, outbound, "{value:?}");
        }
    }

    #[test]
    fn reads_the_driver_and_the_verdict_file() {
        let mut v = good();
        v.insert("RUNNER_DRIVER".into(), "microvm".into());
        v.insert(
            "RUNNER_BOOT_PROBE".into(),
            "/p/.stack/boxlite/boot-probe.json".into(),
        );
        let s = Settings::from_vars(&v).expect("valid");
        assert_eq!(s.driver, DriverSetting::Microvm);
        assert_eq!(
            s.boot_probe,
            Some(PathBuf::from("/p/.stack/boxlite/boot-probe.json"))
        );
        v.insert("RUNNER_DRIVER".into(), "runc".into());
        let s = Settings::from_vars(&v).expect("valid");
        assert_eq!(s.driver, DriverSetting::Runc);
    }
}
