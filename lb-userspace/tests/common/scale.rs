//! The scale check: many backends checked by TCP every interval from one process, with
//! the CPU and memory it takes.
//!
//! It runs in a network namespace of its own (so it needs CAP_SYS_ADMIN): listeners on
//! `0.0.0.0:PORT` there accept every `127.x.y.z:PORT`, so a handful of listening sockets
//! stand for thousands of distinct backends (`backends / ports` addresses per port).
//! Nothing leaves that namespace. The checks run on the same kind of runtime as the
//! daemon's (one worker thread, `bascule::health::runtime`); the listeners on another
//! thread, so the checkers' CPU can be told apart (the kernel's loopback work is charged
//! to whoever sends, so part of the backends' side lands on the checkers: an
//! overestimate).
//!
//! Used by `tests/health_scale.rs` and the bench's `health` figures.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use bascule::{
    config::{
        Backend, CheckType, Forwarding, HealthCheck, InitialState, Protocol, Scheduler, Service,
    },
    health::{raise_fd_limit, runtime, HealthSupervisor, RUNTIME_THREAD},
};

use super::enter_private_netns;

/// What to measure.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub backends: usize,
    /// Listening ports the backends are spread over (at most 65,000 backends per port).
    pub ports: usize,
    pub interval: Duration,
    /// How long to wait for every backend to be up before measuring.
    pub warmup_limit: Duration,
    /// The measured window.
    pub measure: Duration,
}

impl Default for ScaleOptions {
    /// 10,000 backends on 10 ports, every second, measured over 5 s.
    fn default() -> Self {
        ScaleOptions {
            backends: 10_000,
            ports: 10,
            interval: Duration::from_secs(1),
            warmup_limit: Duration::from_secs(30),
            measure: Duration::from_secs(5),
        }
    }
}

/// What it took.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    pub backends: usize,
    pub interval: Duration,
    /// Backends seen up before measuring.
    pub up: usize,
    pub warmup: Duration,
    pub window: Duration,
    /// Attempts (and failed ones) during the window.
    pub attempts: u64,
    pub failed_attempts: u64,
    /// CPU (user + system) of the checkers' runtime thread, and of the whole process
    /// (checkers, listeners, the rest), during the window.
    pub checker_cpu: Duration,
    pub process_cpu: Duration,
    /// Resident memory before starting, at the start and the end of the window, and the
    /// peak.
    pub rss_before: u64,
    pub rss_window_start: u64,
    pub rss_during: u64,
    pub rss_peak: u64,
    /// Open file descriptors before, during (end of the window) and after stopping.
    pub fds_before: usize,
    pub fds_during: usize,
    pub fds_after: usize,
}

impl ScaleReport {
    pub fn attempts_per_second(&self) -> f64 {
        self.attempts as f64 / self.window.as_secs_f64()
    }

    /// The share of one core the checkers used.
    pub fn checker_cpu_share(&self) -> f64 {
        self.checker_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    pub fn process_cpu_share(&self) -> f64 {
        self.process_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "health checks: {} backends, tcp, every {:?}, one process",
            self.backends, self.interval
        )?;
        writeln!(
            f,
            "  all {} up after {:.1} s; measured {:.1} s: {} attempts ({:.0}/s), {} failed",
            self.up,
            self.warmup.as_secs_f64(),
            self.window.as_secs_f64(),
            self.attempts,
            self.attempts_per_second(),
            self.failed_attempts
        )?;
        writeln!(
            f,
            "  CPU: checkers {:.1}% of one core, whole process (with the listeners) {:.1}%",
            100.0 * self.checker_cpu_share(),
            100.0 * self.process_cpu_share()
        )?;
        writeln!(
            f,
            "  memory (RSS): {:.1} MiB before, {:.1} MiB while checking (+{:.1} MiB; {:+.1} MiB over the window), peak {:.1} MiB",
            mib(self.rss_before),
            mib(self.rss_during),
            mib(self.rss_during.saturating_sub(self.rss_before)),
            (self.rss_during as f64 - self.rss_window_start as f64) / (1024.0 * 1024.0),
            mib(self.rss_peak)
        )?;
        write!(
            f,
            "  open files: {} before, {} while checking, {} after stopping",
            self.fds_before, self.fds_during, self.fds_after
        )
    }
}

/// Runs the scale check (see the module documentation). Needs root (a network namespace).
pub fn run(options: &ScaleOptions) -> Result<ScaleReport> {
    let options = options.clone();
    thread::Builder::new()
        .name("health-scale".into())
        .spawn(move || -> Result<ScaleReport> {
            enter_private_netns()?;
            measure(&options)
        })
        .context("cannot start the scale-check thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the scale check panicked"))?
}

fn measure(o: &ScaleOptions) -> Result<ScaleReport> {
    if o.ports == 0 || o.backends.div_ceil(o.ports) > 65_000 {
        bail!(
            "spread {} backends over more ports than {}",
            o.backends,
            o.ports
        );
    }
    raise_fd_limit();
    let fds_before = open_fds();
    let rss_before = rss_bytes().0;

    let services = scale_services(o);
    let listeners = Listeners::start(services.iter().map(|s| s.port).collect())?;
    let rt = runtime().context("cannot start the health-check runtime")?;
    let supervisor = HealthSupervisor::start(rt.handle().clone(), &services);

    let started = Instant::now();
    let up = loop {
        let up = supervisor.snapshot().values().filter(|h| h.up).count();
        if up == o.backends || started.elapsed() > o.warmup_limit {
            break up;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let warmup = started.elapsed();

    let totals = |s: &HealthSupervisor| {
        s.snapshot()
            .values()
            .fold((0, 0), |(a, f), h| (a + h.attempts, f + h.failed_attempts))
    };
    let (a0, f0) = totals(&supervisor);
    let rss_window_start = rss_bytes().0;
    let (checker0, process0, t0) = (thread_cpu(RUNTIME_THREAD), process_cpu(), Instant::now());
    thread::sleep(o.measure);
    let (checker1, process1, window) = (thread_cpu(RUNTIME_THREAD), process_cpu(), t0.elapsed());
    let (a1, f1) = totals(&supervisor);
    let fds_during = open_fds();
    let (rss_during, rss_peak) = rss_bytes();

    drop(supervisor);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(listeners);
    let fds_after = open_fds();
    Ok(ScaleReport {
        backends: o.backends,
        interval: o.interval,
        up,
        warmup,
        window,
        attempts: a1 - a0,
        failed_attempts: f1 - f0,
        checker_cpu: checker1.saturating_sub(checker0),
        process_cpu: process1.saturating_sub(process0),
        rss_before,
        rss_window_start,
        rss_during,
        rss_peak,
        fds_before,
        fds_during,
        fds_after,
    })
}

/// `ports` services (one per listening port), the backends spread over 127.0.0.0/8.
fn scale_services(o: &ScaleOptions) -> Vec<Service> {
    let per_port = o.backends.div_ceil(o.ports);
    let mut check = HealthCheck::new(CheckType::Tcp);
    check.interval = o.interval;
    check.timeout = o.interval;
    check.rise = 1;
    check.fall = 1;
    check.initial_state = InitialState::Down;
    (0..o.ports)
        .map(|p| {
            let first = p * per_port;
            let last = (first + per_port).min(o.backends);
            Service {
                name: format!("scale{p}"),
                vip: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
                port: 20_000 + p as u16,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Mh,
                forwarding: Forwarding::Tun,
                persistence: Duration::ZERO,
                sorry_server: None,
                maglev_table_size: lb_common::MAGLEV_TABLE_SIZE,
                backends: (first..last)
                    .map(|i| {
                        let n = i as u32 + 2; // 127.0.0.2 onwards
                        Backend {
                            address: IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n)),
                            port: None,
                            weight: 1,
                            forwarding: None,
                            max_connections: None,
                            min_connections: None,
                            failed_weight: 0,
                        }
                    })
                    .collect(),
                health_check: Some(check.clone()),
                vips: Vec::new(),
                ports: Vec::new(),
            }
        })
        .collect()
}

/// Listeners accepting and closing at once, on a thread of their own.
struct Listeners {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listeners {
    fn start(ports: Vec<u16>) -> Result<Listeners> {
        let unique: HashSet<u16> = ports.into_iter().collect();
        let mut sockets = Vec::new();
        for port in unique {
            // A deep accept queue: 1,000 backends share each port, and a listener thread
            // starved for a moment on a loaded machine must not drop their SYNs (a dropped
            // SYN is resent after 1 s: the check, 1 s timeout, fails). std's bind
            // listens with a backlog of 128; one run here failed 13 of 52,646 checks.
            let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            l.set_reuse_address(true)?;
            l.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into())
                .and_then(|()| l.listen(4096))
                .with_context(|| format!("cannot listen on port {port} in the scale namespace"))?;
            l.set_nonblocking(true)?;
            sockets.push(std::net::TcpListener::from(l));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("scale-listeners".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("listener runtime");
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for l in sockets {
                        let l = tokio::net::TcpListener::from_std(l).expect("listener");
                        tasks.push(tokio::spawn(async move {
                            while let Ok((conn, _)) = l.accept().await {
                                drop(conn);
                            }
                        }));
                    }
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    for t in tasks {
                        t.abort();
                    }
                });
            })?;
        Ok(Listeners {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// (VmRSS, VmHWM) of this process, in bytes.
pub fn rss_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU of the whole process.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage with a valid out-pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User + system CPU of this process's threads named `name` (from /proc, in clock ticks).
pub fn thread_cpu(name: &str) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ...: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the state.
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += num(11) + num(12);
    }
    Duration::from_millis(ticks * 1000 / hz)
}
