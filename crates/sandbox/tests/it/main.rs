//! The crate's integration tests: a real registry, real pulls and (as root) real runc sandboxes.

mod support;

mod bench;
mod files;
#[cfg(feature = "microvm")]
mod microvm;
mod net;
mod oci;
mod outbound;
mod rootless;
mod sandboxes;
