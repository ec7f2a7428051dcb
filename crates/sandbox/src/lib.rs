//! Runs a platform runner's sandboxes with runc: images pulled from an OCI registry into a
//! content-addressed layer cache, one overlayfs bundle per sandbox, and the calls a control plane
//! needs on a running sandbox (exec, files, a TCP connection to one of its ports).
//!
//! Everything lives under one runner home ([`Home`]); a [`Driver`] holds no state of its own, so
//! a restarted runner's new driver takes its running sandboxes back with [`Driver::adopt`].
//!
//! As root the overlays are mounted in the runner's own mount namespace and runc runs as it is.
//! Run by an ordinary user, the driver keeps a namespace holder per home ([`userns`]): the
//! overlays and every runc command live in its user and mount namespaces (rootless runc, no
//! cgroup limits), files are reached through `/proc/<holder>/root`, and connections are opened by
//! a forked child that enters the sandbox's namespaces.
//!
//! A sandbox has only `lo` unless the driver's [`Outbound`] setting is on: then each sandbox gets
//! a `tap0` from a slirp4netns process of its own ([`outbound`]), the host's loopback excepted.
//!
//! A runner holds a [`BoxDriver`]: runc (the [`Driver`] above, with its namespace holder and its
//! outbound setting), or (cargo feature `microvm`) BoxLite microVMs ([`microvm`]), which need no
//! holder and have BoxLite's own network, chosen by the host's boot-probe [`verdict`].

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
pub mod outbound;
pub mod pidfd;
pub mod runc;
pub mod userns;
pub mod verdict;

pub use boxdriver::{BoxDriver, DriverError, SandboxImage};
pub use bundle::{BundleError, Init, Resources};
pub use digest::{Digest, DigestError};
pub use driver::{
    Adoption, CreateOptions, Driver, DriverConfig, Frozen, Sandbox, SandboxError, SandboxRecord,
    Status,
};
pub use files::FileError;
pub use id::{IdError, SandboxId};
pub use layout::{Home, SandboxPaths};
pub use net::NetError;
pub use oci::{Image, ImageConfig, ImageRef, ImageStore, Layer, PullError, Pulled, UnpackError};
pub use outbound::{Outbound, OutboundError};
pub use runc::{ContainerState, ExecOptions, ExecOutput, InitProcess, Runc, RuncError};
pub use userns::{Holder, UsernsError};
