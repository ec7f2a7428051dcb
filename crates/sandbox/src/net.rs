//! TCP connections into a sandbox's network namespace, from the host, without any routed
//! address: the socket is opened on a short-lived thread that has `setns`'d into the sandbox's
//! namespace, and handed back to tokio. A socket stays in the namespace it was created in, so the
//! connection works from any thread afterwards.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;

use nix::sched::CloneFlags;

/// Why a connection into a sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The sandbox's network namespace could not be opened (its init is gone?).
    #[error("cannot open the network namespace of pid {pid}")]
    Namespace {
        /// The sandbox's init pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Entering the namespace failed (needs CAP_SYS_ADMIN).
    #[error("cannot enter the sandbox's network namespace")]
    Setns(#[source] std::io::Error),
    /// Nothing accepted the connection in time.
    #[error("cannot connect to port {port} in the sandbox: is something listening on it?")]
    Connect {
        /// The port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connecting thread could not be started or died.
    #[error("the connecting thread failed")]
    Thread(#[source] std::io::Error),
}

/// The network namespace of process `pid`, opened now: the handle stays valid (and names the
/// same namespace) even if the process exits later.
pub fn open_namespace(pid: i32) -> Result<File, NetError> {
    File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NetError::Namespace { pid, source })
}

/// Connects to `127.0.0.1:port` inside the network namespace `netns`.
pub async fn connect(
    netns: File,
    port: u16,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, never a pooled one (tokio's blocking pool would reuse a thread left in
    // the sandbox's namespace for unrelated work); it ends right after, and its namespace with it.
    std::thread::Builder::new()
        .name("sandbox-netns".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&netns, port, timeout));
        })
        .map_err(NetError::Thread)?;
    let stream = rx
        .await
        .map_err(|_| NetError::Thread(std::io::Error::other("the connecting thread died")))??;
    tokio::net::TcpStream::from_std(stream).map_err(|source| NetError::Connect { port, source })
}

fn connect_in(netns: &File, port: u16, timeout: Duration) -> Result<StdTcpStream, NetError> {
    nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Setns(e.into()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = StdTcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| NetError::Connect { port, source })?;
    stream
        .set_nonblocking(true)
        .map_err(|source| NetError::Connect { port, source })?;
    Ok(stream)
}
