//! Runs a platform runner's sandboxes with runc: images pulled from an OCI registry into a
//! content-addressed layer cache, one overlayfs bundle per sandbox, and the calls a control plane
//! needs on a running sandbox (exec, files, a TCP connection to one of its ports).

pub mod digest;
pub mod oci;

pub use digest::{Digest, DigestError};
pub use oci::{Image, ImageConfig, ImageRef, ImageStore, Layer, PullError, Pulled, UnpackError};
