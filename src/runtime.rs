//! The async runtime `stack` and its box supervisors run on: two worker threads (a laptop's
//! orchestrator needs no more, and the services it starts want the cores).

/// A multi-threaded tokio runtime with two workers, timers and I/O enabled.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
