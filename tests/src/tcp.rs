//! Long-lived TCP connections for failover tests: an echo server on backends, and
//! client connections that keep exchanging small messages and record how long each one
//! went without an answer.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

use crate::lab::{enter_netns, in_netns};

/// How often blocking loops look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// An echo server in a namespace: every byte received is sent back. Stops on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    /// The remote address of every connection accepted so far (the client's address and
    /// port, as forwarding keeps them; IPv4 ones as IPv4, not IPv4-mapped), oldest first.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let peers = self.peers.lock().map(|p| p.clone()).unwrap_or_default();
        peers
            .into_iter()
            .map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()))
            .collect()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts an echo server in `ns` on `addr` (`[::]:PORT` serves IPv4 too).
pub fn echo_server(ns: &str, addr: SocketAddr) -> Result<EchoServer> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let ns_owned = ns.to_string();
    let stop_flag = stop.clone();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let accepted = peers.clone();
    let thread = thread::Builder::new()
        .name(format!("echo-{ns}"))
        .spawn(move || {
            let listener = match enter_netns(&ns_owned).and_then(|()| {
                let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut connections = Vec::new();
            while !stop_flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if let Ok(mut list) = accepted.lock() {
                            list.push(peer);
                        }
                        let stop = stop_flag.clone();
                        connections.push(thread::spawn(move || echo(stream, &stop)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(_) => thread::sleep(POLL),
                }
            }
            for c in connections {
                let _ = c.join();
            }
        })
        .context("cannot spawn the echo server thread")?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("echo server in {ns} did not start"))??;
    Ok(EchoServer {
        stop,
        thread: Some(thread),
        peers,
    })
}

fn echo(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL * 5));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// What one probe connection saw.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// The client side of the connection.
    pub local: SocketAddr,
    /// Messages sent and echoed back intact.
    pub round_trips: u64,
    /// The longest time between two answered messages.
    pub max_gap: Duration,
    /// Why the connection stopped working, if it did.
    pub failure: Option<String>,
}

/// Connections exchanging a message every `period`, each on its own thread, until stopped.
pub struct Probes {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ProbeResult>>,
    /// Round trips of each connection so far, while it runs.
    progress: Vec<Arc<AtomicU64>>,
}

/// Opens `count` connections from `ns` to `target` (each connect bounded by `timeout`),
/// then keeps each one busy: an 8-byte counter sent every `period`, its echo awaited for
/// at most `give_up` before the connection counts as failed.
pub fn start_probes(
    ns: &str,
    target: SocketAddr,
    count: usize,
    period: Duration,
    timeout: Duration,
    give_up: Duration,
) -> Result<Probes> {
    let streams = in_netns(ns, move || {
        (0..count)
            .map(|i| {
                TcpStream::connect_timeout(&target, timeout)
                    .with_context(|| format!("probe connection {i} to {target}"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut progress = Vec::new();
    for stream in streams {
        let stop = stop.clone();
        let round_trips = Arc::new(AtomicU64::new(0));
        progress.push(round_trips.clone());
        threads.push(thread::spawn(move || {
            probe(stream, period, give_up, &stop, &round_trips)
        }));
    }
    Ok(Probes {
        stop,
        threads,
        progress,
    })
}

impl Probes {
    /// How many connections.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Round trips completed so far by each connection, and whether it has stopped (a
    /// connection stops before [`Probes::stop`] only when it failed).
    pub fn progress(&self) -> Vec<(u64, bool)> {
        self.progress
            .iter()
            .zip(&self.threads)
            .map(|(n, t)| (n.load(Ordering::SeqCst), t.is_finished()))
            .collect()
    }

    /// Stops every connection and returns what each saw.
    pub fn stop(mut self) -> Vec<ProbeResult> {
        self.stop.store(true, Ordering::SeqCst);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| t.join().expect("probe thread"))
            .collect()
    }
}

impl Drop for Probes {
    /// Dropped without [`Probes::stop`] (a failing test, an interrupted demo): the
    /// connections stop at their next message instead of running on unattended.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn probe(
    mut stream: TcpStream,
    period: Duration,
    give_up: Duration,
    stop: &AtomicBool,
    live: &AtomicU64,
) -> ProbeResult {
    let mut result = ProbeResult {
        local: stream.local_addr().expect("connected socket"),
        round_trips: 0,
        max_gap: Duration::ZERO,
        failure: None,
    };
    let _ = stream.set_read_timeout(Some(POLL));
    let _ = stream.set_write_timeout(Some(give_up));
    let mut last_ok = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        if let Err(e) = stream.write_all(&seq.to_be_bytes()) {
            result.failure = Some(format!("write {seq}: {e}"));
            break;
        }
        let mut got = [0u8; 8];
        let mut filled = 0;
        let sent = Instant::now();
        while filled < got.len() {
            if sent.elapsed() > give_up {
                result.failure = Some(format!("no echo of message {seq} in {give_up:?}"));
                return result;
            }
            match stream.read(&mut got[filled..]) {
                Ok(0) => {
                    result.failure = Some(format!("closed by the peer before echo {seq}"));
                    return result;
                }
                Ok(n) => filled += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    result.failure = Some(format!("read echo {seq}: {e}"));
                    return result;
                }
            }
        }
        if u64::from_be_bytes(got) != seq {
            result.failure = Some(format!("echo {} instead of {seq}", u64::from_be_bytes(got)));
            return result;
        }
        let now = Instant::now();
        result.max_gap = result.max_gap.max(now - last_ok);
        last_ok = now;
        result.round_trips += 1;
        live.store(result.round_trips, Ordering::SeqCst);
        thread::sleep(period);
    }
    result
}
