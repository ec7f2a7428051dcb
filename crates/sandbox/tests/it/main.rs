//! The crate's integration tests: a real registry, real pulls and (as root) real runc sandboxes.

mod support;

mod oci;
mod sandboxes;
