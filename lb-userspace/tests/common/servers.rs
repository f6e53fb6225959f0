//! Loopback servers for the health-check tests: a TCP server running a handler per
//! connection, stopped when dropped, and what the tests ask of the checks' outcomes.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use bascule::health::{BackendKey, Outcome};
use tokio::{io::AsyncReadExt, net::TcpListener, net::TcpStream, task::JoinHandle};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A running server; its accept loop is aborted when the test drops it.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// A server at `addr` whose work is `task` (a UDP responder, say).
    pub fn new(addr: SocketAddr, task: JoinHandle<()>) -> Server {
        Server { addr, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server on loopback running `serve` on each connection.
pub async fn tcp_server<F, Fut>(serve: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = l.accept().await {
            tokio::spawn(serve(conn));
        }
    });
    Server { addr, task }
}

/// Reads a request head (up to the blank line, or until the peer stops sending).
pub async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The key of a backend at `addr`, in service "t".
pub fn key(addr: SocketAddr) -> BackendKey {
    BackendKey::new("t", addr.ip(), addr.port())
}

/// A failed check's reason; panics on any other outcome.
pub fn down(outcome: Outcome) -> String {
    match outcome {
        Outcome::Down(why) => why,
        other => panic!("expected a failure, got {other:?}"),
    }
}
