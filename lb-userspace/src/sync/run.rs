//! The sender thread (the datapath's ring buffer to the peers, batched) and the receiver
//! task (peers' datagrams checked, their entries handed on).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use lb_common::SyncReport;

use super::{
    key::load_key,
    wire::{self, Entry, Header, ReplayGuard, MAX_ENTRIES},
    Shared,
};
use crate::config::StateSync;

/// How long a report waits for others to share its datagram.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// How often the sender reads the ring: the datapath does not wake it (its reports are
/// submitted without wakeup, which costs less per new flow). The ring holds about 13,000
/// reports: read every 5 ms, it keeps up with 2.6 million new flows per second.
const RING_POLL: Duration = Duration::from_millis(5);

/// Sync while it runs; [`Running::stop`] ends it.
pub struct Running {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    receiver: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.receiver.abort();
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
    }
}

/// Bytes of the receiving socket's buffer asked for: room for bursts (a peer's bulk of new
/// flows, or a flood of forged datagrams) while the receiver checks MACs.
const RECEIVE_BUFFER: i32 = 4 << 20;

/// Asks for a receive buffer of `bytes` (the kernel caps it at `net.core.rmem_max`
/// unless the process may exceed it, as root may).
fn receive_buffer(socket: &UdpSocket, bytes: i32) {
    let fd = socket.as_raw_fd();
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: an int option on a socket this process owns.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        return unix_ms() ^ u64::from(std::process::id()) << 40;
    }
    u64::from_ne_bytes(b)
}

/// Starts sync (on the current tokio runtime): reads the key, binds `sync.port`, takes
/// the datapath's ring from `shared` (the controller put it there) for the sender thread,
/// and calls `deliver` with each peer's authenticated, fresh entries.
pub fn start(
    config: &StateSync,
    shared: Arc<Shared>,
    deliver: impl Fn(IpAddr, Vec<Entry>) + Send + Sync + 'static,
) -> Result<Running> {
    let key = Arc::new(load_key(&config.key_file)?);
    let any: IpAddr = if config.peers.iter().all(IpAddr::is_ipv4) {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, config.port))
        .with_context(|| format!("sync: cannot listen on UDP port {}", config.port))?;
    receive_buffer(&socket, RECEIVE_BUFFER);
    let send_socket = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ring = shared.ring.lock().unwrap_or_else(|e| e.into_inner()).take();
    let sender = match ring {
        Some(ring) => {
            let sender = Sender {
                key: key.clone(),
                node: random_u64(),
                seq: unix_ms() * 1000,
                peers: config
                    .peers
                    .iter()
                    .map(|a| SocketAddr::new(*a, config.port))
                    .collect(),
                socket: send_socket,
                shared: shared.clone(),
            };
            let stop = stop.clone();
            Some(
                std::thread::Builder::new()
                    .name("bascule-sync".into())
                    .spawn(move || sender.run(ring, &stop))?,
            )
        }
        None => {
            tracing::warn!("sync: the datapath's report ring is not available; receiving only");
            None
        }
    };
    let receiver = tokio::spawn(receive(socket, key, shared, deliver));
    tracing::info!(peers = ?config.peers, port = config.port, "sync started");
    Ok(Running {
        stop,
        sender,
        receiver,
    })
}

struct Sender {
    key: Arc<Vec<u8>>,
    node: u64,
    seq: u64,
    peers: Vec<SocketAddr>,
    socket: UdpSocket,
    shared: Arc<Shared>,
}

impl Sender {
    fn run(mut self, mut ring: RingBuf<MapData>, stop: &AtomicBool) {
        let fd = ring.as_raw_fd();
        let mut pending: Vec<Entry> = Vec::new();
        let mut since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let wait = since
                .map_or(BATCH_WAIT, |s| BATCH_WAIT.saturating_sub(s.elapsed()))
                .min(RING_POLL);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd; the ring's fd lives as long as `ring`.
            unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
            let directory = self.shared.directory();
            while let Some(item) = ring.next() {
                if item.len() < std::mem::size_of::<SyncReport>() {
                    continue;
                }
                // SAFETY: the datapath writes one `SyncReport` per record.
                let report: SyncReport = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                drop(item);
                if let Some(e) = directory.name(&report) {
                    pending.push(e);
                    since.get_or_insert_with(Instant::now);
                }
                if pending.len() >= MAX_ENTRIES {
                    self.send(&pending);
                    pending.clear();
                    since = None;
                }
            }
            if since.is_some_and(|s| s.elapsed() >= BATCH_WAIT) {
                self.send(&pending);
                pending.clear();
                since = None;
            }
        }
        self.send(&pending);
    }

    fn send(&mut self, entries: &[Entry]) {
        for chunk in entries.chunks(MAX_ENTRIES) {
            self.seq += 1;
            let header = Header {
                node: self.node,
                seq: self.seq,
                timestamp_ms: unix_ms(),
            };
            let datagram = wire::encode(&self.key, header, chunk);
            for peer in &self.peers {
                if let Err(e) = self.socket.send_to(&datagram, peer) {
                    tracing::debug!(%peer, "sync: cannot send: {e}");
                }
            }
            self.shared
                .stats
                .sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }
}

async fn receive(
    socket: tokio::net::UdpSocket,
    key: Arc<Vec<u8>>,
    shared: Arc<Shared>,
    deliver: impl Fn(IpAddr, Vec<Entry>) + Send + Sync + 'static,
) {
    let mut guard = ReplayGuard::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("sync: receive failed: {e}");
                continue;
            }
        };
        let stats = &shared.stats;
        let checked = wire::decode(&key, &buf[..n])
            .and_then(|(header, entries)| guard.accept(&header, unix_ms()).map(|()| entries));
        match checked {
            Ok(entries) => {
                let from = from.ip().to_canonical();
                stats.heard(from);
                stats
                    .received
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                deliver(from, entries);
            }
            Err(why) => {
                tracing::debug!(%from, reason = why.label(), "sync: datagram refused");
                stats.reject(why, 1);
            }
        }
    }
}
