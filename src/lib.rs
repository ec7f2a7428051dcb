//! `stack`: bring up a whole local development platform on one machine and keep it healthy.
//!
//! The CLI (`cli`) is a thin layer over this library: `spec` loads and validates the stack,
//! `graph` orders it, `engine` drives a `backend` to start, probe (`probe`) and stop services,
//! `supervisor` keeps native processes alive, `layout` owns every path of the state dir.
//! See `docs/architecture.md`.

pub mod backend;
pub mod boxes;
pub mod build;
pub mod cli;
pub mod controlplane;
pub mod doctor;
pub mod engine;
pub mod exit;
pub mod exports;
pub mod graph;
pub mod layout;
pub mod probe;
pub mod progress;
pub mod rehearse;
pub mod reset;
pub mod runtime;
pub mod s3;
pub mod schema;
pub mod secrets;
pub mod seed;
pub mod snapshot;
pub mod spec;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod watch;
