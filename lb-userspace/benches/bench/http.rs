//! Figure 3 of issue 7, "a userspace peer on the same lab": short HTTP exchanges through
//! bascule (`dr`) and through HAProxy (`mode tcp`), on the same LB namespace, with the same
//! client, the same backends and the same load, interleaved round by round.
//!
//! The lab is the tests crate's standard topology with three backends: a client, one LB
//! node (`lb1`) and backends `b1`..`b3` on one bridge, the backends holding the VIP
//! 10.112.0.100 on `lo` with ARP suppressed; the client routes 10.112.0.0/24 via `lb1`.
//! Each backend answers `GET /` with its name from a small epoll server (tokio, two worker
//! threads for the three backends, in this process), with HTTP/1.1 keep-alive unless the
//! request says `Connection: close`.
//!
//! - bascule: `bascule run -c` on `lb1` with the lab's config (`dr`, Maglev, XDP in generic
//!   mode, as every lab test runs it: a veth whose peer has no XDP program cannot take
//!   native `XDP_TX`), wrk to `10.112.0.100:80`. Replies go from the backends straight to
//!   the client (direct return).
//! - HAProxy: `haproxy -db` on `lb1`, `mode tcp`, `balance roundrobin` over the same three
//!   backends, listening on a second address of `lb1`, 10.112.0.200 on `lo` (routed via
//!   `lb1` like the VIP, so the client's path to the LB is the same). Both directions go
//!   through it; its thread count is its default (one per CPU, two here).
//!
//! Each round starts one side, measures, stops it, then the other (the order alternates
//! round by round, so a drift of the shared machine weighs on both alike; nothing of one
//! side runs while the other is measured). Per side and round, two runs of wrk from the
//! client (`-t1`, [`CONNECTIONS`] connections, 3 s; 1 s with `--quick`):
//!
//! - `http.{bascule,haproxy}.cps`: connections/s, wrk with `-H "Connection: close"`
//!   (one request per connection: the backend closes after its answer).
//! - `http.{bascule,haproxy}.rps`: requests/s over keep-alive connections.
//! - `http.{bascule,haproxy}.lb_cpu`: the LB node's CPU per connection during the
//!   connections/s run, in CPU-µs per connection (= CPU-ms per 1,000 connections).
//!   HAProxy: its process's utime + stime (`/proc/PID/stat`, all threads). bascule: the
//!   daemon's utime + stime plus the XDP program's own run time, from the kernel's BPF
//!   statistics (`run_time_ns` of the program attached to `lb1`'s `eth0`, enabled with
//!   `BPF_ENABLE_STATS` for the figure's duration only: the kernel turns them off when
//!   the file descriptor closes, even if the bench dies; the statistics add two clock
//!   reads to each program run, which bascule pays in this figure).
//!
//! What the CPU figure does and does not count. All namespaces share one kernel, and this
//! kernel has no IRQ time accounting: the softirq work of the veth/bridge path (and each
//! namespace's TCP receive processing) is charged to whichever task was running when it
//! ran, in practice the task that sent the packet. So HAProxy's figure includes the
//! delivery of what it sends (through the bridge into the client's and backends' stacks)
//! and misses its own receive processing (charged to wrk and the backends); bascule's
//! misses the generic-XDP work around its program (the skb handed to the program, the
//! `XDP_TX` transmit) which runs in the client's send path. Both are "the LB's own
//! process(es) and program", not "everything the LB namespace costs the kernel".
//!
//! Why the comparison is fair on a 2-core machine where wrk and the backends take CPU
//! too: both sides run on the same lab, with the same client command and the same
//! backends, alternately within one run, so whatever the client and backends cost, and
//! whatever the rest of the machine does meanwhile, weighs on both; the ratios are the
//! figure. The absolute rates are those of this lab, bounded by wrk and the backends' TCP
//! stacks as much as by the LB. wrk runs one thread (a second would only take CPU from
//! the rest of the lab); on this project's machines the rates moved little between 8 and
//! 128 connections, nor with HAProxy at `nbthread 1` instead of its default.
//!
//! Each wrk run must have its requests answered by the backends (their own count) with
//! under 1% errors, and bascule's program must have run, or the figure fails. Each side
//! also prints, per round, its LB CPU in cores and per keep-alive request, and bascule's
//! split between daemon and XDP program with the program's runs per connection.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use bascule_tests::{
    http_get,
    lab::{in_netns, ip, sysctl, Host, Spawned},
    topology::{Forwarding, Topology, TopologySpec, VIP4},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::figure::{one_line, refused_on_purpose, Figure, GroupResult, Settings};

/// Where HAProxy listens on `lb1` (on `lo`, in the subnet the client routes via `lb1`).
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 112, 0, 200);
const PORT: u16 = 80;
/// wrk's concurrent connections (one thread).
const CONNECTIONS: usize = 32;
/// A backend connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(10);
/// Bounds on a side's start: the daemon's readiness (attempts x poll), then its first
/// answer through the LB (each try bounded by POLL_TIMEOUT).
const READY_ATTEMPTS: usize = 200;
const POLL: Duration = Duration::from_millis(50);
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bascule,
    Haproxy,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Bascule => "bascule",
            Side::Haproxy => "haproxy",
        }
    }

    fn target(self) -> SocketAddr {
        let ip = match self {
            Side::Bascule => VIP4,
            Side::Haproxy => PEER_ADDR,
        };
        SocketAddr::new(IpAddr::V4(ip), PORT)
    }
}

/// One side's measurements in one round.
struct Sample {
    cps: f64,
    rps: f64,
    /// CPU-µs of the LB per connection in the connections/s run: the process's and
    /// the XDP program's (with the program's runs per connection).
    cpu_per_conn: f64,
    process_per_conn: f64,
    program_per_conn: f64,
    runs_per_conn: f64,
    /// The same run's LB CPU in CPU-seconds per second.
    cores: f64,
    /// CPU-µs of the LB per request in the keep-alive run.
    cpu_per_req: f64,
}

/// `http.*`: see the module documentation.
/// Unavailable where HAProxy or wrk is not installed (`cargo xtask setup` installs both)
/// or the kernel keeps BPF run-time statistics off.
pub fn figures(s: &Settings, figures: &mut Vec<Figure>) -> GroupResult {
    for program in ["haproxy", "wrk"] {
        refused_on_purpose(program)?;
        installed(program)?;
    }
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
        format!(
            "BPF run-time statistics (BPF_ENABLE_STATS) refused: {}",
            one_line(&e)
        )
    })?;
    let seconds = if s.quick { 1 } else { 3 };
    let lab = HttpLab::new().expect("build the HTTP lab");
    let fig = |side: Side, what: &str, unit: &'static str| {
        let mut f = Figure::new(&format!("http.{}.{what}", side.name()), unit);
        if side == Side::Bascule {
            f.baseline = Some(format!("http.haproxy.{what}"));
        }
        f
    };
    let sides = [Side::Haproxy, Side::Bascule];
    let mut cps = sides.map(|side| fig(side, "cps", "conn/s"));
    let mut rps = sides.map(|side| fig(side, "rps", "req/s"));
    let mut cpu = sides.map(|side| fig(side, "lb_cpu", "us/conn"));
    for round in 0..s.rounds {
        let order = if round % 2 == 0 { [1, 0] } else { [0, 1] };
        for i in order {
            let side = sides[i];
            let m = lab
                .measure(side, seconds)
                .unwrap_or_else(|e| panic!("http round {round}, {}: {e:#}", side.name()));
            let split = if side == Side::Bascule {
                format!(
                    " = daemon {:.2} + XDP {:.2} ({:.1} runs, {:.0} ns each)",
                    m.process_per_conn,
                    m.program_per_conn,
                    m.runs_per_conn,
                    m.program_per_conn * 1e3 / m.runs_per_conn
                )
            } else {
                String::new()
            };
            println!(
                "http round {round} {:<7} {:>6.0} conn/s, LB {:>5.2} us/conn{split}, {:.2} cores; \
                 keep-alive {:>6.0} req/s, LB {:.2} us/req",
                side.name(),
                m.cps,
                m.cpu_per_conn,
                m.cores,
                m.rps,
                m.cpu_per_req
            );
            cps[i].samples.push(m.cps);
            rps[i].samples.push(m.rps);
            cpu[i].samples.push(m.cpu_per_conn);
        }
    }
    for f in cps.into_iter().chain(rps).chain(cpu) {
        figures.push(f);
    }
    Ok(())
}

/// Whether `program` runs (`-v` prints its version with both programs).
fn installed(program: &str) -> GroupResult {
    match std::process::Command::new(program).arg("-v").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{program} cannot be run ({e}): `cargo xtask setup` installs it"
        )),
    }
}

/// The lab, the backends' servers and the two LB configs. Fields drop in order: the
/// servers leave the namespaces before the lab deletes them.
struct HttpLab {
    backends: Backends,
    topo: Topology,
    bin: PathBuf,
    bascule_config: PathBuf,
    haproxy_config: PathBuf,
}

impl HttpLab {
    fn new() -> Result<HttpLab> {
        let topo = Topology::new(
            "bench-http",
            TopologySpec {
                lbs: 1,
                backends: 3,
            },
        )?;
        let lb = topo.lbs[0].clone();
        // Many short connections: the whole ephemeral range, and TIME_WAIT ports reused
        // (the client's to the LB, the LB's to the backends when HAProxy connects).
        for host in [&topo.client, &lb] {
            sysctl(
                &host.netns,
                &[
                    ("net.ipv4.ip_local_port_range", "1024 65535"),
                    ("net.ipv4.tcp_tw_reuse", "1"),
                ],
            )?;
        }
        ip(&[
            "-n",
            &lb.netns,
            "addr",
            "add",
            &format!("{PEER_ADDR}/32"),
            "dev",
            "lo",
        ])?;
        let bascule_config = topo.write_lb_config(Forwarding::Dr)?;
        let haproxy_config = topo.write_config("haproxy.cfg", &haproxy_config(&topo.backends))?;
        let backends = Backends::start(&topo.backends)?;
        Ok(HttpLab {
            backends,
            topo,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_bascule")),
            bascule_config,
            haproxy_config,
        })
    }

    fn lb(&self) -> &Host {
        &self.topo.lbs[0]
    }

    /// Starts `side` on `lb1`, waits until the client gets an answer through it, runs both
    /// wrk runs, stops it.
    fn measure(&self, side: Side, seconds: u32) -> Result<Sample> {
        let lb = self.lb();
        let (process, program) = match side {
            Side::Bascule => {
                let daemon = self
                    .topo
                    .start_bascule(&self.bin, lb, &self.bascule_config)?;
                self.topo.wait_ready(lb, &daemon, READY_ATTEMPTS, POLL)?;
                let program = xdp_program_id(lb)?;
                (daemon, Some(program))
            }
            Side::Haproxy => {
                let config = path_str(&self.haproxy_config)?;
                let haproxy = self
                    .topo
                    .lab
                    .spawn_net_only(&lb.netns, "haproxy", &["haproxy", "-db", "-f", config])
                    .context("is haproxy installed (`cargo xtask setup`)?")?;
                (haproxy, None)
            }
        };
        let result = self.answering(side, &process).and_then(|()| {
            let lb_cpu = || -> Result<LbCpu> {
                let (run_time, runs) = match program {
                    Some(id) => {
                        let p = program_info(id)?;
                        (p.run_time(), p.run_count())
                    }
                    None => (Duration::ZERO, 0),
                };
                Ok(LbCpu {
                    process: process_cpu(process.pid)?,
                    program: run_time,
                    runs,
                })
            };
            let before = lb_cpu()?;
            let close = self.wrk(side, true, seconds)?;
            let middle = lb_cpu()?;
            let keep = self.wrk(side, false, seconds)?;
            let after = lb_cpu()?;
            let (conn, req) = (middle.since(&before), after.since(&middle));
            if program.is_some() && conn.runs == 0 {
                bail!("the XDP program never ran: the traffic bypassed bascule");
            }
            let per_conn = |d: Duration| d.as_secs_f64() * 1e6 / close.requests as f64;
            Ok(Sample {
                cps: close.rate,
                rps: keep.rate,
                cpu_per_conn: per_conn(conn.process + conn.program),
                process_per_conn: per_conn(conn.process),
                program_per_conn: per_conn(conn.program),
                runs_per_conn: conn.runs as f64 / close.requests as f64,
                cores: (conn.process + conn.program).as_secs_f64() / close.seconds,
                cpu_per_req: (req.process + req.program).as_secs_f64() * 1e6 / keep.requests as f64,
            })
        });
        let stopped = self.topo.lab.terminate(&process);
        let sample =
            result.with_context(|| format!("{}'s log:\n{}", side.name(), process.log_text()))?;
        stopped?;
        Ok(sample)
    }

    /// Polls the side's address from the client until a backend answers, at most
    /// [`ANSWER_WITHIN`].
    fn answering(&self, side: Side, process: &Spawned) -> Result<()> {
        let names: Vec<&str> = self.topo.backends.iter().map(|b| b.role.as_str()).collect();
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.topo.lab.exit_status(process) {
                bail!("{} exited ({status})", process.name);
            }
            match http_get(&self.topo.client.netns, side.target(), POLL_TIMEOUT) {
                Ok(body) if names.contains(&body.as_str()) => return Ok(()),
                Ok(body) => last = format!("unexpected answer {body:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(POLL);
        }
        bail!(
            "{} did not answer within {ANSWER_WITHIN:?}: {last}",
            side.target()
        )
    }

    /// One wrk run from the client; `close` asks for one request per connection.
    fn wrk(&self, side: Side, close: bool, seconds: u32) -> Result<WrkRun> {
        let url = format!("http://{}/", side.target());
        let (threads, conns, duration) = (
            "-t1".to_string(),
            format!("-c{CONNECTIONS}"),
            format!("-d{seconds}s"),
        );
        let mut args = vec!["wrk", &threads, &conns, &duration];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let served_before = self.backends.served();
        let out = self
            .topo
            .lab
            .exec_ok(&self.topo.client.netns, &args)
            .context("is wrk installed (`cargo xtask setup`)?")?;
        let run = parse_wrk(&out).with_context(|| format!("wrk printed:\n{out}"))?;
        let served = self.backends.served() - served_before;
        // Every answer wrk counted was written by a backend; errors are reported and, past
        // 1% of the requests, make the run worthless.
        if run.requests == 0 || run.errors * 100 > run.requests || served < run.requests {
            bail!(
                "wrk to {url}: {} requests, {} errors, the backends served {served}:\n{out}",
                run.requests,
                run.errors
            );
        }
        if run.errors > 0 {
            println!(
                "http: wrk to {url}: {} errors beside {} requests",
                run.errors, run.requests
            );
        }
        Ok(run)
    }
}

/// The LB's CPU so far: its process's (utime + stime), its XDP program's run time and
/// run count (none for HAProxy).
struct LbCpu {
    process: Duration,
    program: Duration,
    runs: u64,
}

impl LbCpu {
    fn since(&self, earlier: &LbCpu) -> LbCpu {
        LbCpu {
            process: self.process.saturating_sub(earlier.process),
            program: self.program.saturating_sub(earlier.program),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// What wrk reported.
#[derive(Debug, PartialEq)]
struct WrkRun {
    requests: u64,
    seconds: f64,
    /// Requests/s as wrk computes it.
    rate: f64,
    /// Socket errors and non-2xx/3xx answers.
    errors: u64,
}

/// Reads wrk's summary: `N requests in 3.00s, ...`, `Requests/sec: R`, and the optional
/// `Socket errors: connect a, read b, write c, timeout d` and `Non-2xx or 3xx responses: n`.
fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut run = WrkRun {
        requests: 0,
        seconds: 0.0,
        rate: f64::NAN,
        errors: 0,
    };
    let mut seen = false;
    for line in out.lines().map(str::trim) {
        if let Some((count, rest)) = line.split_once(" requests in ") {
            run.requests = count.trim().parse()?;
            let secs = rest.split(',').next().unwrap_or_default();
            run.seconds = secs.trim().trim_end_matches('s').parse()?;
            seen = true;
        } else if let Some(rate) = line.strip_prefix("Requests/sec:") {
            run.rate = rate.trim().parse()?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            for part in errors.split(',') {
                let n = part.split_whitespace().last().unwrap_or("0");
                run.errors += n.parse::<u64>()?;
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += n.trim().parse::<u64>()?;
        }
    }
    if !seen || !run.rate.is_finite() || run.seconds <= 0.0 {
        bail!("no `N requests in Ts` and `Requests/sec:` lines");
    }
    Ok(run)
}

/// HAProxy in TCP mode on [`PEER_ADDR`]:80 over the backends' own addresses.
fn haproxy_config(backends: &[Host]) -> String {
    let mut c = format!(
        "global\n    maxconn 8000\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
         timeout client 10s\n    timeout server 10s\n\nfrontend web\n    bind {PEER_ADDR}:{PORT}\n    \
         default_backend servers\n\nbackend servers\n    balance roundrobin\n"
    );
    for b in backends {
        let addr = b.ipv4().expect("lab backends have IPv4");
        c.push_str(&format!("    server {} {addr}:{PORT}\n", b.role));
    }
    c
}

/// utime + stime of process `pid`, all its threads (`/proc/PID/stat` fields 14 and 15).
fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("parse /proc/{pid}/stat"))?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// utime + stime in clock ticks from a `/proc/PID/stat` line (the fields after the
/// command, which may hold spaces and parentheses, count from the last `)`).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The id of the XDP program attached to `eth0` of `lb` (`ip -j link show`).
fn xdp_program_id(lb: &Host) -> Result<u32> {
    let out = ip(&["-j", "-n", &lb.netns, "link", "show", "dev", "eth0"])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("ip -j link show")?;
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .ok_or_else(|| anyhow!("no XDP program on eth0 of {}: {out}", lb.netns))
}

/// BPF program `id`'s info: its run time and count since statistics were enabled.
fn program_info(id: u32) -> Result<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| anyhow!("BPF program {id} is gone"))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// The backends' HTTP servers: one listener per backend namespace on `[::]:80`, served by
/// one tokio runtime (a socket belongs to the namespace it was created in, whichever
/// thread then serves it). Stops when dropped.
struct Backends {
    served: Vec<Arc<AtomicU64>>,
    /// Held for its worker threads; dropping it stops the servers.
    _runtime: tokio::runtime::Runtime,
}

impl Backends {
    fn start(hosts: &[Host]) -> Result<Backends> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-backend")
            .enable_all()
            .build()
            .context("start the backends' runtime")?;
        let mut served = Vec::new();
        for host in hosts {
            let listener = in_netns(&host.netns, listen)
                .with_context(|| format!("listen on [::]:{PORT} in {}", host.netns))?;
            let count = Arc::new(AtomicU64::new(0));
            let responses = Arc::new(Responses::new(&host.role));
            runtime.spawn(serve(listener, responses, count.clone()));
            served.push(count);
        }
        Ok(Backends {
            served,
            _runtime: runtime,
        })
    }

    /// Requests answered so far, all backends.
    fn served(&self) -> u64 {
        self.served.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

fn listen() -> Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT);
    socket.bind(&any.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A backend's two answers: keep-alive, and closing.
struct Responses {
    keep: Vec<u8>,
    close: Vec<u8>,
}

impl Responses {
    fn new(name: &str) -> Responses {
        let body = format!("{name}\n");
        let make = |extra: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        Responses {
            keep: make(""),
            close: make("Connection: close\r\n"),
        }
    }
}

async fn serve(listener: std::net::TcpListener, responses: Arc<Responses>, served: Arc<AtomicU64>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench backend: cannot register its listener: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, responses.clone(), served.clone()));
            }
            // Out of file descriptors, say: let connections finish.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers the requests of one connection until the client closes it, asks to close it,
/// or leaves it idle for [`IDLE`].
async fn connection(
    mut stream: tokio::net::TcpStream,
    responses: Arc<Responses>,
    served: Arc<AtomicU64>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    let mut have = 0;
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut buf[have..])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        have += n;
        while let Some(end) = buf[..have]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| at + 4)
        {
            let close = wants_close(&buf[..end]);
            let answer = if close {
                &responses.close
            } else {
                &responses.keep
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
            served.fetch_add(1, Ordering::Relaxed);
            if close {
                return;
            }
            buf.copy_within(end..have, 0);
            have -= end;
        }
        if have == buf.len() {
            return;
        }
    }
}

/// HTTP/1.1 closes on `Connection: close`; HTTP/1.0 unless `Connection: keep-alive`.
fn wants_close(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let http10 = head
        .lines()
        .next()
        .is_some_and(|l| l.trim_end().ends_with("http/1.0"));
    if head.contains("\nconnection: close") {
        true
    } else {
        http10 && !head.contains("\nconnection: keep-alive")
    }
}
