//! A service definition (`image:`, `box:`, `ports:`, `environment:`) as BoxLite's `BoxOptions`.
//! Pure: no runtime, no I/O beyond resolving paths, so it is unit-tested against the real types.

use std::path::Path;

use boxlite::runtime::options::{PortSpec, VolumeSpec};
use boxlite::{BoxOptions, PortProtocol, RootfsSpec};

use crate::spec::ServiceSpec;

/// Published ports listen here only: a box is as private as a native service.
pub const LOOPBACK: &str = "127.0.0.1";

/// The box name of `service` in stack `stack`: `<stack>-<service>`, unique per BoxLite home.
pub fn box_name(stack: &str, service: &str) -> String {
    format!("{stack}-{service}")
}

/// Where the image comes from: a local OCI image layout (a path: absolute, or starting with
/// `./` or `../`, relative to `project_dir`) or a registry reference such as `redis:7-alpine`.
pub fn rootfs(image: &str, project_dir: &Path) -> RootfsSpec {
    if image.starts_with('/') || image.starts_with("./") || image.starts_with("../") {
        RootfsSpec::RootfsPath(project_dir.join(image).to_string_lossy().into_owned())
    } else {
        RootfsSpec::Image(image.to_string())
    }
}

/// Why a service cannot be turned into box options.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BoxOptionsError {
    /// The service has no image to boot.
    #[error("service `{service}` has no `image:`")]
    NoImage {
        /// Service.
        service: String,
    },
    /// BoxLite counts vCPUs in a byte.
    #[error("box.cpus = {cpus} is more than 255")]
    TooManyCpus {
        /// The value asked for.
        cpus: u32,
    },
}

/// The box options for `svc`: every named host port published on 127.0.0.1 to its guest port,
/// volumes from the service's data dir, `environment:` with `box.environment` over it. The box
/// is detached (it belongs to its supervisor, not to one `stack` command) and kept after a stop,
/// so its id survives restarts.
pub fn box_options(svc: &ServiceSpec, project_dir: &Path) -> Result<BoxOptions, BoxOptionsError> {
    let image = svc
        .image
        .as_deref()
        .ok_or_else(|| BoxOptionsError::NoImage {
            service: svc.name.clone(),
        })?;
    let b = svc.boxed.clone().unwrap_or_default();
    let cpus = match b.cpus {
        None => None,
        Some(n) => Some(u8::try_from(n).map_err(|_| BoxOptionsError::TooManyCpus { cpus: n })?),
    };
    let mut ports = Vec::new();
    for (name, host) in &svc.ports {
        // A port without a guest port is the same number inside the box.
        let guest = b.guest_ports.get(name).copied().unwrap_or(*host);
        ports.push(PortSpec {
            host_port: Some(*host),
            guest_port: guest,
            protocol: PortProtocol::Tcp,
            host_ip: Some(LOOPBACK.into()),
        });
    }
    let volumes = b
        .volumes
        .iter()
        .map(|(host, guest)| {
            let host = if host.is_absolute() {
                host.clone()
            } else {
                svc.data_dir.join(host)
            };
            VolumeSpec::bind_mount(host.to_string_lossy(), guest.as_str())
        })
        .collect();
    let mut env: std::collections::BTreeMap<String, String> = svc.environment.clone();
    env.extend(b.environment.clone());
    Ok(BoxOptions {
        cpus,
        memory_mib: b.memory_mib,
        working_dir: b.working_dir.clone(),
        env: env.into_iter().collect(),
        rootfs: rootfs(image, project_dir),
        volumes,
        ports,
        entrypoint: (!b.entrypoint.is_empty()).then(|| b.entrypoint.clone()),
        cmd: (!b.command.is_empty()).then(|| b.command.clone()),
        detach: true,
        auto_delete: Some(0),
        ..BoxOptions::default()
    })
}

/// The data dirs the box's volumes need on the host (created before the start).
pub fn volume_dirs(opts: &BoxOptions) -> Vec<std::path::PathBuf> {
    opts.volumes
        .iter()
        .filter(|v| !v.host_path.is_empty())
        .map(|v| std::path::PathBuf::from(&v.host_path))
        .collect()
}
