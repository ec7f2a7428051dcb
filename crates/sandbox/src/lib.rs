//! Runs a platform runner's sandboxes with runc: images pulled from an OCI registry into a
//! content-addressed layer cache, one overlayfs bundle per sandbox, and the calls a control plane
//! needs on a running sandbox (exec, files, a TCP connection to one of its ports).
//!
//! Everything lives under one runner home ([`Home`]); a [`Driver`] holds no state of its own, so
//! a restarted runner's new driver takes its running sandboxes back with [`Driver::adopt`].
//!
//! A runner holds a [`BoxDriver`]: runc, or (cargo feature `microvm`) BoxLite microVMs
//! ([`microvm`]), chosen by the host's boot-probe [`verdict`].

pub mod boxdriver;
pub mod bundle;
pub mod digest;
pub mod driver;
pub mod files;
pub mod id;
pub mod layout;
#[cfg(feature = "microvm")]
pub mod microvm;
pub mod net;
pub mod oci;
pub mod runc;
pub mod verdict;

pub use boxdriver::{BoxDriver, DriverError, SandboxImage};
pub use bundle::{BundleError, Init, Resources};
pub use digest::{Digest, DigestError};
pub use driver::{
    Adoption, CreateOptions, Driver, DriverConfig, Sandbox, SandboxError, SandboxRecord, Status,
};
pub use files::FileError;
pub use id::{IdError, SandboxId};
pub use layout::{Home, SandboxPaths};
pub use net::NetError;
pub use oci::{Image, ImageConfig, ImageRef, ImageStore, Layer, PullError, Pulled, UnpackError};
pub use runc::{ContainerState, ExecOptions, ExecOutput, InitProcess, Runc, RuncError};
