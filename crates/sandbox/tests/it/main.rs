//! The crate's integration tests: a real registry, real pulls and (as root) real runc sandboxes.

mod support;

mod files;
mod oci;
mod sandboxes;
