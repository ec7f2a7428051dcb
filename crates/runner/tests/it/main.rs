//! The runner's integration tests: the real `runner` binary as a process, a real registry with
//! the real busybox image, real runc sandboxes (as root), and a stand-in control plane.

mod support;

mod api;
mod backups;
mod bench;
mod life;
#[cfg(feature = "microvm")]
mod microvm;
mod outbound;
mod registration;
mod restarts;
mod rootless;
