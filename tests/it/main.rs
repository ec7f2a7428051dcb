//! Integration tests: the real `stack` binary against real processes on free loopback ports in
//! temporary directories. One test binary, one module per area.

mod harness;

mod backup;
mod boxes;
mod components;
mod control_plane;
mod data;
mod engine;
mod images;
mod lifecycle;
#[cfg(feature = "microvm")]
mod microvm;
mod migration;
mod platform;
mod sandboxes;
mod services;
mod spec;
mod surfaces;
