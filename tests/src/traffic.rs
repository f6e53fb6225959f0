//! Long-lived flows for tests that change things under traffic (reload, restart,
//! failover): servers that say who they are on every exchange, client flows that stay
//! open, and a prober that exercises every flow on a steady beat and reports which ones
//! broke or moved.
//!
//! Sockets belong to the namespace they were created in, whichever thread uses them
//! later: flows are opened on a thread inside the client's namespace, then driven from
//! the test's own threads.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::lab::{enter_netns, in_netns};

/// How often servers look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// A TCP or UDP server on a thread in a namespace; stops when dropped.
pub struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Datagrams (UDP) or lines (TCP) received.
    received: Arc<AtomicU64>,
    /// Payload bytes received.
    received_bytes: Arc<AtomicU64>,
}

impl NameServer {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP on `addr` in `ns`: every line a client sends is answered with `name` and a newline,
/// on the same connection, as long as the client keeps it open.
pub fn tcp_name_server(ns: &str, addr: SocketAddr, name: &str) -> Result<NameServer> {
    start_server(ns, name, move |name, stop, received, bytes| {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(move || {
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (name, stop, received, bytes) =
                            (name.clone(), stop.clone(), received.clone(), bytes.clone());
                        workers.push(thread::spawn(move || {
                            let _ = serve_lines(stream, &name, &stop, &received, &bytes);
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(_) => thread::sleep(POLL),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        })
    })
}

fn serve_lines(
    stream: TcpStream,
    name: &str,
    stop: &AtomicBool,
    received: &AtomicU64,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL * 5))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(n) if line.ends_with('\n') => {
                received.fetch_add(1, Ordering::SeqCst);
                bytes.fetch_add(n as u64, Ordering::SeqCst);
                writer.write_all(format!("{name}\n").as_bytes())?;
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// UDP on `addr` in `ns` (bind the VIP itself, so answers leave from it): every datagram
/// is counted and answered with `name`.
pub fn udp_name_server(ns: &str, addr: SocketAddr, name: &str) -> Result<NameServer> {
    start_server(ns, name, move |name, stop, received, bytes| {
        let sock = UdpSocket::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
        sock.set_read_timeout(Some(POLL))?;
        Ok(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    received.fetch_add(1, Ordering::SeqCst);
                    bytes.fetch_add(n as u64, Ordering::SeqCst);
                    let _ = sock.send_to(name.as_bytes(), from);
                }
            }
        })
    })
}

type Counter = Arc<AtomicU64>;

fn start_server<S, L>(ns: &str, name: &str, setup: S) -> Result<NameServer>
where
    S: FnOnce(String, Arc<AtomicBool>, Counter, Counter) -> Result<L> + Send + 'static,
    L: FnOnce() + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let received = Counter::default();
    let received_bytes = Counter::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let thread = {
        let (ns, name, stop, received, bytes) = (
            ns.to_string(),
            name.to_string(),
            stop.clone(),
            received.clone(),
            received_bytes.clone(),
        );
        thread::Builder::new()
            .name(format!("name-server-{name}"))
            .spawn(move || {
                match enter_netns(&ns).and_then(|()| setup(name, stop, received, bytes)) {
                    Ok(serve) => {
                        let _ = ready_tx.send(Ok(()));
                        serve();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("server {name} in {ns} did not start within 5 s"))??;
    Ok(NameServer {
        stop,
        thread: Some(thread),
        received,
        received_bytes,
    })
}

/// One open client flow.
pub enum Flow {
    Tcp {
        stream: TcpStream,
        reader: BufReader<TcpStream>,
        local: SocketAddr,
    },
    Udp {
        sock: UdpSocket,
        local: SocketAddr,
    },
}

impl Flow {
    /// The client side of the 5-tuple.
    pub fn local(&self) -> SocketAddr {
        match self {
            Flow::Tcp { local, .. } | Flow::Udp { local, .. } => *local,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Flow::Tcp { .. } => "tcp",
            Flow::Udp { .. } => "udp",
        }
    }

    /// One exchange: sends a line (a datagram), returns who answered.
    pub fn round_trip(&mut self, timeout: Duration) -> Result<String> {
        match self {
            Flow::Tcp { stream, reader, .. } => {
                stream.set_write_timeout(Some(timeout))?;
                reader.get_ref().set_read_timeout(Some(timeout))?;
                stream.write_all(b"ping\n")?;
                let mut line = String::new();
                let n = reader.read_line(&mut line).context("no answer")?;
                if n == 0 {
                    bail!("connection closed");
                }
                Ok(line.trim_end().to_string())
            }
            Flow::Udp { sock, .. } => {
                sock.set_read_timeout(Some(timeout))?;
                sock.send(b"ping")?;
                let mut buf = [0u8; 256];
                let n = sock.recv(&mut buf).context("no answer")?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        }
    }
}

/// Opens `count` TCP connections from `ns` to `dst`.
pub fn open_tcp_flows(
    ns: &str,
    dst: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Flow>> {
    in_netns(ns, move || {
        (0..count)
            .map(|i| {
                let stream = TcpStream::connect_timeout(&dst, timeout)
                    .with_context(|| format!("connection {i} to {dst}"))?;
                let local = stream.local_addr()?;
                let reader = BufReader::new(stream.try_clone()?);
                Ok(Flow::Tcp {
                    stream,
                    reader,
                    local,
                })
            })
            .collect()
    })
}

/// Opens `count` connected UDP sockets from `ns` to `dst` (each its own source port).
pub fn open_udp_flows(ns: &str, dst: SocketAddr, count: usize) -> Result<Vec<Flow>> {
    in_netns(ns, move || {
        (0..count)
            .map(|_| {
                let any: SocketAddr = if dst.is_ipv4() {
                    "0.0.0.0:0".parse().expect("valid")
                } else {
                    "[::]:0".parse().expect("valid")
                };
                let sock = UdpSocket::bind(any)?;
                sock.connect(dst)?;
                let local = sock.local_addr()?;
                Ok(Flow::Udp { sock, local })
            })
            .collect()
    })
}

/// What happened to one flow while it was probed.
#[derive(Clone, Debug, Default)]
pub struct FlowRecord {
    pub flow: String,
    /// Backends that answered, in order of first answer (one when the flow never moved).
    pub backends: Vec<String>,
    pub ok: u64,
    pub failures: Vec<String>,
}

impl FlowRecord {
    /// Broken (an exchange failed) or moved to another backend.
    pub fn lost(&self) -> bool {
        !self.failures.is_empty() || self.backends.len() > 1
    }
}

/// Exercises every flow every `interval` on a thread, until [`Prober::stop`].
pub struct Prober {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<FlowRecord>>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// `flows` must each have answered once already (their first backend is known).
    pub fn start(mut flows: Vec<Flow>, interval: Duration, timeout: Duration) -> Result<Prober> {
        let mut records = Vec::new();
        for f in &mut flows {
            let first = f
                .round_trip(timeout)
                .with_context(|| format!("{} flow from {}: first exchange", f.kind(), f.local()))?;
            records.push(FlowRecord {
                flow: format!("{} {}", f.kind(), f.local()),
                backends: vec![first],
                ok: 1,
                failures: Vec::new(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let records = Arc::new(Mutex::new(records));
        let thread = {
            let (stop, rounds, records) = (stop.clone(), rounds.clone(), records.clone());
            thread::Builder::new()
                .name("prober".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        for (i, f) in flows.iter_mut().enumerate() {
                            let result = f.round_trip(timeout);
                            let mut all = records.lock().expect("prober records");
                            let r = &mut all[i];
                            match result {
                                Ok(who) => {
                                    r.ok += 1;
                                    if !r.backends.contains(&who) {
                                        r.backends.push(who);
                                    }
                                }
                                Err(e) => r.failures.push(format!("{e:#}")),
                            }
                        }
                        rounds.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(interval);
                    }
                })?
        };
        Ok(Prober {
            stop,
            rounds,
            records,
            thread: Some(thread),
        })
    }

    /// Completed rounds so far (every flow exercised once per round).
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `more` further rounds are done, at most `limit`.
    pub fn wait_rounds(&self, more: u64, limit: Duration) -> Result<()> {
        let target = self.rounds() + more;
        let deadline = std::time::Instant::now() + limit;
        while self.rounds() < target {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the prober did {} of {more} rounds in {limit:?}",
                    more + self.rounds() - target
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn stop(mut self) -> Vec<FlowRecord> {
        self.halt();
        self.records.lock().expect("prober records").clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}
