//! The sender thread (the datapath's ring buffer to the peers, batched) and the receiver
//! task (peers' datagrams checked, their entries handed on).

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use lb_common::SyncReport;

use super::{
    key::load_key,
    socket::{self, Bound},
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
    link: Arc<Link>,
    peers: Vec<SocketAddr>,
    shared: Arc<Shared>,
}

impl Running {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.receiver.abort();
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
    }

    /// Bulk sync: asks every peer for its whole table and waits until one has sent it
    /// (its entries are applied as they come) or `limit` passed. Logs how many entries
    /// came; the number, `None` if no peer finished in time.
    pub async fn bulk(&self, limit: Duration) -> Option<u64> {
        let before = self.shared.stats.received.load(Ordering::Relaxed);
        let done = self.shared.bulk_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        for peer in &self.peers {
            self.link.send(wire::BULK_REQUEST, &[], *peer);
        }
        let finished = tokio::time::timeout(limit, done).await.is_ok();
        let received = self.shared.stats.received.load(Ordering::Relaxed) - before;
        if finished {
            tracing::info!(
                entries = received,
                "sync: bulk transfer received from a peer"
            );
            Some(received)
        } else {
            tracing::warn!(
                entries = received,
                limit_ms = limit.as_millis() as u64,
                "sync: no peer finished a bulk transfer in time; going on without it"
            );
            None
        }
    }
}

/// What sends: the key, this node's id and sequence, the socket bound to `sync.port`.
struct Link {
    key: Vec<u8>,
    node: u64,
    seq: std::sync::atomic::AtomicU64,
    socket: UdpSocket,
}

impl Link {
    /// One datagram of `message` with `entries` (at most `MAX_ENTRIES`) to `to`.
    fn send(&self, message: u8, entries: &[Entry], to: SocketAddr) {
        let header = Header {
            message,
            node: self.node,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            timestamp_ms: unix_ms(),
        };
        let datagram = wire::encode(&self.key, header, entries);
        if let Err(e) = self.socket.send_to(&datagram, to) {
            tracing::debug!(%to, "sync: cannot send: {e}");
        }
    }
}

/// The controller's answer to "list the whole table" (bulk sync), asked by the receiver.
pub type TableSource =
    Box<dyn Fn() -> tokio::sync::oneshot::Receiver<Vec<Entry>> + Send + Sync + 'static>;

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
/// calls `deliver` with each peer's authenticated, fresh entries, and answers a peer's
/// bulk request with what `table` lists.
pub fn start(
    config: &StateSync,
    shared: Arc<Shared>,
    deliver: impl Fn(IpAddr, Vec<Entry>) + Send + Sync + 'static,
    table: TableSource,
) -> Result<Running> {
    let key = load_key(&config.key_file)?;
    let Bound {
        socket,
        destinations: peers,
    } = socket::bind(config)?;
    let link = Arc::new(Link {
        key,
        node: random_u64(),
        seq: (unix_ms() * 1000).into(),
        socket: socket.try_clone()?,
    });
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ring = shared.ring.lock().unwrap_or_else(|e| e.into_inner()).take();
    let sender = match ring {
        Some(ring) => {
            let sender = Sender {
                link: link.clone(),
                peers: peers.clone(),
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
    let receiver = tokio::spawn(receive(
        socket,
        link.clone(),
        config.port,
        shared.clone(),
        deliver,
        Arc::new(table),
    ));
    match &config.group {
        Some(g) => tracing::info!(
            group = %g.address,
            interface = %g.interface,
            port = config.port,
            "sync started (multicast)"
        ),
        None => tracing::info!(peers = ?config.peers, port = config.port, "sync started"),
    }
    Ok(Running {
        stop,
        sender,
        receiver,
        link,
        peers,
        shared,
    })
}

struct Sender {
    link: Arc<Link>,
    peers: Vec<SocketAddr>,
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
            for peer in &self.peers {
                self.link.send(wire::FLOWS, chunk, *peer);
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
    link: Arc<Link>,
    port: u16,
    shared: Arc<Shared>,
    deliver: impl Fn(IpAddr, Vec<Entry>) + Send + Sync + 'static,
    table: Arc<TableSource>,
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
        if wire::sender(&buf[..n]) == Some(link.node) {
            // Our own (a multicast group can loop it back): nothing to learn, nothing to
            // count. A forger who takes our id only gets its datagram ignored.
            continue;
        }
        let checked = wire::decode(&link.key, &buf[..n]).and_then(|(header, entries)| {
            guard
                .accept(&header, unix_ms())
                .map(|()| (header.message, entries))
        });
        let reply_to = reply_address(from, port);
        let from = from.ip().to_canonical();
        match checked {
            Ok((message, entries)) => {
                stats.heard(from);
                match message {
                    wire::BULK_REQUEST => {
                        let asked = table();
                        tokio::spawn(answer_bulk(link.clone(), reply_to, asked));
                    }
                    wire::BULK_DONE => shared.bulk_done.notify_waiters(),
                    _ => {
                        stats
                            .received
                            .fetch_add(entries.len() as u64, Ordering::Relaxed);
                        deliver(from, entries);
                    }
                }
            }
            Err(why) => {
                tracing::debug!(%from, reason = why.label(), "sync: datagram refused");
                stats.reject(why, 1);
            }
        }
    }
}

/// Where to answer a datagram from `from`: its address on `port`, a link-local IPv6
/// one with the scope (the interface) it came in on, which a node with several links
/// needs to find it again.
fn reply_address(from: SocketAddr, port: u16) -> SocketAddr {
    match from {
        SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => {
            SocketAddr::V6(SocketAddrV6::new(*a.ip(), port, 0, a.scope_id()))
        }
        other => SocketAddr::new(other.ip().to_canonical(), port),
    }
}

/// Sends a peer that asked for it the whole table (`FLOWS` datagrams, paced), then
/// `BULK_DONE`.
async fn answer_bulk(
    link: Arc<Link>,
    to: SocketAddr,
    table: tokio::sync::oneshot::Receiver<Vec<Entry>>,
) {
    let Ok(entries) = table.await else {
        return;
    };
    for (i, chunk) in entries.chunks(MAX_ENTRIES).enumerate() {
        link.send(wire::FLOWS, chunk, to);
        if i % 64 == 63 {
            // About 1,300 entries per millisecond: the peer's socket buffer keeps up.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    link.send(wire::BULK_DONE, &[], to);
    tracing::info!(peer = %to.ip(), entries = entries.len(), "sync: bulk transfer sent");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_goes_to_the_port_and_keeps_a_link_local_scope() {
        let link_local: SocketAddr = "[fe80::1%3]:40000".parse().unwrap();
        assert_eq!(
            reply_address(link_local, 9470),
            "[fe80::1%3]:9470".parse().unwrap()
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.3]:40000".parse().unwrap();
        assert_eq!(
            reply_address(mapped, 9470),
            "10.0.0.3:9470".parse().unwrap()
        );
        let v4: SocketAddr = "10.0.0.3:40000".parse().unwrap();
        assert_eq!(reply_address(v4, 9470), "10.0.0.3:9470".parse().unwrap());
    }
}
