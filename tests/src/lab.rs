//! The lab: namespaces on one bridge, processes spawned inside them, and teardown.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    net::IpAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, Once,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// Every lab namespace starts with this, followed by `{pid}x{n}`: the pid says whether the
/// run that made it is still alive (see [`cleanup_stale`]).
const NETNS_PREFIX: &str = "bsc";
/// Where the `ip netns` names live; a namespace is entered by opening its file here.
const NETNS_RUN_DIR: &str = "/run/netns";
/// How long a spawned process gets to exit after SIGTERM before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// Where bascule pins its datapath and keeps its state, one directory per netns inode.
const BASCULE_PIN_ROOT: &str = "/sys/fs/bpf/bascule";
const BASCULE_RUN_ROOT: &str = "/run/bascule";
/// Linux limit on interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Like `eprintln!`, but never panics: it runs in `Drop` during unwinding, where a
/// second panic (stderr closed, say) would abort before the namespaces are deleted.
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);
static STALE_SWEEP: Once = Once::new();

/// One host of a lab: a network namespace with `eth0` on the lab's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Short name given by the caller: `client`, `lb1`, `b1`...
    pub role: String,
    /// The `ip netns` name: `{lab prefix}-{role}`.
    pub netns: String,
    /// MAC address of the host's `eth0`.
    pub mac: String,
    /// Addresses on `eth0` (IPv4 as /24, IPv6 as /64).
    pub addrs: Vec<IpAddr>,
}

impl Host {
    /// The host's first IPv4 address on `eth0`.
    pub fn ipv4(&self) -> Option<IpAddr> {
        self.addrs.iter().copied().find(IpAddr::is_ipv4)
    }

    /// The host's first IPv6 address on `eth0`.
    pub fn ipv6(&self) -> Option<IpAddr> {
        self.addrs.iter().copied().find(IpAddr::is_ipv6)
    }
}

/// A process started in a lab namespace; its stdout and stderr go to [`Spawned::log`].
#[derive(Clone, Debug)]
pub struct Spawned {
    pub pid: u32,
    /// Short label used in messages and as the log file's name.
    pub name: String,
    pub log: PathBuf,
}

impl Spawned {
    /// Everything the process printed so far (stdout and stderr interleaved).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(no log: {err})"))
    }
}

/// A set of network namespaces on one bridge. See the crate documentation.
///
/// Drop order matters for in-process servers: drop [`crate::HttpServer`] handles before the
/// lab (declare them after it), so their threads leave the namespaces being deleted.
pub struct Lab {
    prefix: String,
    tag: String,
    switch: String,
    hosts: Vec<Host>,
    children: Mutex<HashMap<u32, (Child, Spawned)>>,
    dir: PathBuf,
    spawned_count: AtomicUsize,
}

impl Lab {
    /// Creates an empty lab: its switch namespace with bridge `br0`, and a scratch
    /// directory for configs and logs. `tag` only names the scratch directory.
    ///
    /// The first lab of a process also removes labs left behind by dead processes.
    pub fn new(tag: &str) -> Result<Lab> {
        STALE_SWEEP.call_once(|| {
            if let Err(err) = cleanup_stale() {
                warn!("lab: could not remove stale labs: {err:#}");
            }
        });
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NETNS_PREFIX}{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("bascule-lab-{prefix}-{tag}"));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut lab = Lab {
            switch: format!("{prefix}-sw"),
            prefix,
            tag: tag.to_string(),
            hosts: Vec::new(),
            children: Mutex::new(HashMap::new()),
            dir,
            spawned_count: AtomicUsize::new(0),
        };
        lab.create_switch()?;
        Ok(lab)
    }

    fn create_switch(&mut self) -> Result<()> {
        let sw = self.switch.clone();
        create_netns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Namespace prefix of this lab, `bsc{pid}x{n}`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tag given to [`Lab::new`].
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The switch namespace (bridge `br0`), where each host's `eth0` has its peer
    /// `v{role}` (see [`Lab::switch_port`]).
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// The name of `host`'s port on the bridge: the peer of its `eth0`.
    pub fn switch_port(host: &Host) -> String {
        format!("v{}", host.role)
    }

    /// Scratch directory for configs and logs; removed with the lab.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every namespace of this lab, hosts then the switch.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        names.push(self.switch.clone());
        names
    }

    /// The hosts added so far, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host with this role.
    pub fn host(&self, role: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .ok_or_else(|| anyhow!("lab {} has no host `{role}`", self.prefix))
    }

    /// Adds host `{prefix}-{role}`: `eth0` plugged into the bridge, up, with `addrs`
    /// (IPv4 as /24, IPv6 as /64 without duplicate address detection), `lo` up,
    /// reverse-path filtering off.
    pub fn add_host(&mut self, role: &str, addrs: &[IpAddr]) -> Result<Host> {
        let port = format!("v{role}");
        debug_assert_eq!(
            port,
            Lab::switch_port(&Host {
                role: role.to_string(),
                netns: String::new(),
                mac: String::new(),
                addrs: Vec::new(),
            })
        );
        if port.len() > IFNAME_MAX || role.is_empty() {
            bail!(
                "host role `{role}` must be 1..{} characters",
                IFNAME_MAX - 1
            );
        }
        if self.hosts.iter().any(|h| h.role == role) {
            bail!("lab {} already has a host `{role}`", self.prefix);
        }
        let ns = format!("{}-{role}", self.prefix);
        create_netns(&ns)?;
        // Registered before configuring, so that a failure below still deletes it.
        self.hosts.push(Host {
            role: role.to_string(),
            netns: ns.clone(),
            mac: String::new(),
            addrs: addrs.to_vec(),
        });
        // New interfaces copy `default`: no DAD on link-local either, no 1 s wait.
        sysctl(
            &ns,
            &[
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
            ],
        )?;
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        for addr in addrs {
            match addr {
                IpAddr::V4(a) => {
                    ip(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", "eth0"])?
                }
                IpAddr::V6(a) => ip(&[
                    "-n",
                    &ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?,
            };
        }
        sysctl(
            &ns,
            &[
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
            ],
        )?;
        let mac = mac_of(&ns, "eth0")?;
        let host = self.hosts.last_mut().expect("pushed above");
        host.mac = mac;
        Ok(host.clone())
    }

    /// Runs `ip netns exec NS args...` to completion and returns its output, whatever
    /// its exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        netns_exec(ns, args)
    }

    /// Like [`Lab::exec`], but a non-zero exit is an error carrying stderr.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        checked(
            netns_exec(ns, args)?,
            &format!("ip netns exec {ns} {}", args.join(" ")),
        )
    }

    /// Starts `ip netns exec NS args...` in the background, in its own process group (a
    /// Ctrl-C in the terminal reaches only the caller, which tears down in order).
    /// Output goes to a log file in [`Lab::dir`]. Killed when the lab is dropped.
    pub fn spawn(&self, ns: &str, name: &str, args: &[&str]) -> Result<Spawned> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        self.spawn_command(cmd, name)
            .with_context(|| format!("cannot start `ip netns exec {ns} {}`", args.join(" ")))
    }

    /// Like [`Lab::spawn`], but the process enters only the network namespace (`setns`
    /// before `exec`, as `nsenter --net` does): it keeps the host's mount namespace, so it
    /// sees the host's bpffs at `/sys/fs/bpf`, where bascule pins the datapath that a
    /// restarted daemon adopts. (`ip netns exec` remounts `/sys` privately.)
    pub fn spawn_net_only(&self, ns: &str, name: &str, args: &[&str]) -> Result<Spawned> {
        self.spawn_net_only_env(ns, name, args, &[])
    }

    /// [`Lab::spawn_net_only`] with these environment variables added.
    pub fn spawn_net_only_env(
        &self,
        ns: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Spawned> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("spawn_net_only: no program"))?;
        let path = Path::new(NETNS_RUN_DIR).join(ns);
        let netns = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(rest).envs(env.iter().copied());
        // SAFETY: between fork and exec only setns(2) runs (async-signal-safe); the fd
        // stays open until `spawn` returns, since `netns` lives until then.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = self
            .spawn_command(cmd, name)
            .with_context(|| format!("cannot start `{}` in {ns}", args.join(" ")));
        drop(netns);
        spawned
    }

    fn spawn_command(&self, mut cmd: Command, name: &str) -> Result<Spawned> {
        let n = self.spawned_count.fetch_add(1, Ordering::Relaxed);
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let log = self.dir.join(format!("{n:02}-{safe}.log"));
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()?;
        let spawned = Spawned {
            pid: child.id(),
            name: name.to_string(),
            log,
        };
        self.children
            .lock()
            .expect("lab children lock")
            .insert(spawned.pid, (child, spawned.clone()));
        Ok(spawned)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to a process of this lab, without waiting.
    pub fn signal(&self, process: &Spawned, signal: libc::c_int) -> Result<()> {
        let children = self.children.lock().expect("lab children lock");
        if !children.contains_key(&process.pid) {
            bail!(
                "{} (pid {}) is not a process of this lab",
                process.name,
                process.pid
            );
        }
        // SAFETY: kill(2) on a child we own and have not reaped (the pid is not reused).
        if unsafe { libc::kill(process.pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("kill {}", process.name));
        }
        Ok(())
    }

    /// Stops tracking `process` and hands over its child handle.
    fn take_child(&self, process: &Spawned) -> Result<Child> {
        let entry = self
            .children
            .lock()
            .expect("lab children lock")
            .remove(&process.pid);
        match entry {
            Some((child, _)) => Ok(child),
            None => bail!(
                "{} (pid {}) is not a process of this lab",
                process.name,
                process.pid
            ),
        }
    }

    /// SIGKILL, as a crash would: the process gets no chance to clean up. Returns once it
    /// is gone.
    pub fn kill(&self, process: &Spawned) -> Result<ExitStatus> {
        let mut child = self.take_child(process)?;
        child.kill()?;
        Ok(child.wait()?)
    }

    /// `Some(status)` once the process has exited (it stays reaped and tracked).
    pub fn exit_status(&self, process: &Spawned) -> Option<ExitStatus> {
        let mut children = self.children.lock().expect("lab children lock");
        let (child, _) = children.get_mut(&process.pid)?;
        child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, waits up to 5 s, then SIGKILL. Returns the exit status and whether
    /// it exited on its own within the grace period.
    pub fn terminate(&self, process: &Spawned) -> Result<(ExitStatus, bool)> {
        let mut child = self.take_child(process)?;
        terminate_child(&mut child)
    }

    /// Plugs or unplugs `host`'s cable: sets its port on the lab's bridge up or down.
    /// Unplugged, the host neither sends nor receives anything on the segment.
    pub fn set_plugged(&self, host: &Host, plugged: bool) -> Result<()> {
        let state = if plugged { "up" } else { "down" };
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("v{}", host.role),
            state,
        ])
        .map(drop)
    }

    /// Makes the bridge forward `host`'s MAC to `host`'s port for good (a static entry),
    /// so that, once unplugged, frames for it are dropped rather than flooded.
    pub fn pin_mac(&self, host: &Host) -> Result<()> {
        let out = Command::new("bridge")
            .args(["-n", &self.switch, "fdb", "replace", &host.mac, "dev"])
            .arg(format!("v{}", host.role))
            .args(["master", "static"])
            .output()
            .context("cannot run `bridge` (iproute2)")?;
        checked(out, &format!("bridge fdb replace {} (pin)", host.mac)).map(drop)
    }

    fn terminate_all(&self) {
        let children: Vec<(Child, Spawned)> = self
            .children
            .lock()
            .map(|mut c| c.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for (mut child, spawned) in children {
            if thread::panicking() {
                warn!(
                    "---- log of {} (pid {}) ----\n{}",
                    spawned.name,
                    spawned.pid,
                    spawned.log_text()
                );
            }
            if let Err(err) = terminate_child(&mut child) {
                warn!("lab: cannot stop {}: {err:#}", spawned.name);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.terminate_all();
        for ns in self.namespaces() {
            remove_pinned_bascule_state(&ns);
            if let Err(err) = delete_netns(&ns) {
                warn!("lab: {err:#}");
            }
        }
        if thread::panicking() {
            warn!("lab {}: logs kept in {}", self.prefix, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn terminate_child(child: &mut Child) -> Result<(ExitStatus, bool)> {
    if let Some(status) = child.try_wait()? {
        return Ok((status, true));
    }
    // SAFETY: kill(2) on a child we still own (not yet reaped, so the pid is not reused).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + TERMINATE_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, true));
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    Ok((child.wait()?, false))
}

/// Where bascule pins BPF state (one tree per network namespace, per the specification).
const BPFFS_TREE: &str = "/sys/fs/bpf/bascule";
/// Bounds on the walk of [`BPFFS_TREE`].
const BPFFS_MAX_DEPTH: usize = 4;
const BPFFS_MAX_ENTRIES: usize = 10_000;

/// What a lab occupies in the system, taken while it is up ([`Lab::footprint`]), so that
/// after teardown [`Footprint::leftovers`] can say what is still there.
#[derive(Clone, Debug)]
pub struct Footprint {
    namespaces: Vec<String>,
    /// The namespaces' identities (inode numbers of their nsfs files): a namespace that
    /// `ip netns del` removed from `/run/netns` lives on while a process is inside.
    inodes: Vec<u64>,
    dir: PathBuf,
    /// Clock ticks since boot when the footprint was taken.
    taken_at: u64,
}

/// What a lab left behind after teardown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Namespaces still listed by `ip netns`.
    pub namespaces: Vec<String>,
    /// `pid command` of processes still inside one of the lab's namespaces (these keep the
    /// namespace, and its veths, alive).
    pub processes: Vec<String>,
    /// Entries under `/sys/fs/bpf/bascule` named after one of the lab's namespaces.
    pub pinned: Vec<PathBuf>,
    /// The lab's scratch directory, if it still exists.
    pub scratch_dir: Option<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        *self == Leftovers::default()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing");
        }
        let mut parts = Vec::new();
        if !self.namespaces.is_empty() {
            parts.push(format!("namespaces {:?}", self.namespaces));
        }
        if !self.processes.is_empty() {
            parts.push(format!("processes {:?}", self.processes));
        }
        if !self.pinned.is_empty() {
            parts.push(format!("pinned BPF objects {:?}", self.pinned));
        }
        if let Some(dir) = &self.scratch_dir {
            parts.push(format!("scratch directory {}", dir.display()));
        }
        write!(f, "{}", parts.join(", "))
    }
}

impl Lab {
    /// Takes the lab's [`Footprint`]; call it while the lab is up, check it after drop.
    pub fn footprint(&self) -> Footprint {
        let names = self.namespaces();
        let inodes = names
            .iter()
            .filter_map(|ns| {
                use std::os::unix::fs::MetadataExt;
                fs::metadata(Path::new(NETNS_RUN_DIR).join(ns))
                    .ok()
                    .map(|m| m.ino())
            })
            .collect();
        Footprint {
            namespaces: names,
            inodes,
            dir: self.dir.clone(),
            taken_at: ticks_since_boot().unwrap_or(u64::MAX),
        }
    }
}

impl Footprint {
    /// What of the lab is still there: namespaces, processes in its namespaces (started
    /// before the footprint was taken, so that a namespace created since, which may reuse
    /// a freed identity, is not mistaken for the lab's), pinned BPF state named after its
    /// namespaces, its scratch directory.
    pub fn leftovers(&self) -> Result<Leftovers> {
        let listed = list_netns()?;
        let namespaces = self
            .namespaces
            .iter()
            .filter(|n| listed.contains(n))
            .cloned()
            .collect();
        let mut processes = Vec::new();
        for entry in fs::read_dir("/proc")
            .context("cannot read /proc")?
            .flatten()
        {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(inode) = netns_inode_of(pid) else {
                continue;
            };
            if !self.inodes.contains(&inode) {
                continue;
            }
            if start_ticks(pid).is_some_and(|t| t > self.taken_at) {
                continue;
            }
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            processes.push(format!("{pid} {}", cmdline.trim()));
        }
        let mut pinned = Vec::new();
        let marks: Vec<String> = self
            .inodes
            .iter()
            .map(u64::to_string)
            .chain(self.namespaces.iter().cloned())
            .collect();
        walk_bpffs(Path::new(BPFFS_TREE), 0, &mut 0, &mut |path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| marks.iter().any(|m| n.contains(m.as_str()))) {
                pinned.push(path.to_path_buf());
            }
        });
        Ok(Leftovers {
            namespaces,
            processes,
            pinned,
            scratch_dir: self.dir.exists().then(|| self.dir.clone()),
        })
    }
}

/// Calls `found` on every entry under `dir`, bounded in depth and count.
fn walk_bpffs(dir: &Path, depth: usize, seen: &mut usize, found: &mut dyn FnMut(&Path)) {
    if depth > BPFFS_MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        *seen += 1;
        if *seen > BPFFS_MAX_ENTRIES {
            return;
        }
        let path = entry.path();
        found(&path);
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk_bpffs(&path, depth + 1, seen, found);
        }
    }
}

/// The identity of process `pid`'s network namespace (`net:[INODE]`).
fn netns_inode_of(pid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    parse_ns_link(&link.to_string_lossy())
}

fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command (field 2) may hold spaces and parentheses: count from the last `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn ticks_since_boot() -> Option<u64> {
    let uptime = fs::read_to_string("/proc/uptime").ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    uptime_ticks(uptime.split_whitespace().next()?, u64::try_from(hz).ok()?)
}

/// `/proc/uptime`'s seconds (two decimals) in clock ticks, exactly: through a float,
/// 12345.67 s became 1234566 ticks, one less than the start time of a process begun in
/// that hundredth, which then looked as if it started in the future.
fn uptime_ticks(seconds: &str, hz: u64) -> Option<u64> {
    let (whole, hundredths) = seconds.split_once('.').unwrap_or((seconds, "0"));
    let hundredths: u64 = format!("{hundredths:0<2}").get(..2)?.parse().ok()?;
    let centis = whole.parse::<u64>().ok()? * 100 + hundredths;
    (hz > 0).then_some(centis * hz / 100)
}

/// Deletes lab namespaces (`bsc{pid}x{n}-*`) whose creating process is gone, after killing
/// whatever still runs in them, and their scratch directories. Labs of live processes,
/// and every namespace not named like a lab, are left alone. Returns what it deleted.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for ns in list_netns()? {
        let Some(pid) = lab_owner_pid(&ns) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_netns_processes(&ns);
        remove_pinned_bascule_state(&ns);
        delete_netns(&ns)?;
        deleted.push(ns);
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("bascule-lab-") {
                if lab_owner_pid(rest)
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    Ok(deleted)
}

/// Removes what a bascule daemon pinned for namespace `ns` and left behind (killed, or
/// stopped with `--keep-datapath`): `/sys/fs/bpf/bascule/<netns inode>/` (its XDP links
/// and maps) and `/run/bascule/<netns inode>/`. Nothing else is touched.
pub fn remove_pinned_bascule_state(ns: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(Path::new(NETNS_RUN_DIR).join(ns)) else {
        return;
    };
    let inode = meta.ino().to_string();
    for root in [BASCULE_PIN_ROOT, BASCULE_RUN_ROOT] {
        let dir = Path::new(root).join(&inode);
        if dir.exists() {
            // bpffs pins are files; removing the link pins detaches the programs.
            if let Err(err) = fs::remove_dir_all(&dir) {
                warn!("lab: cannot remove {}: {err}", dir.display());
            }
        }
    }
}

/// The pid in a lab name `bsc{pid}x{n}-...`, or None if `name` is not a lab's.
fn lab_owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn kill_netns_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let pids: Vec<libc::pid_t> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        for &pid in &pids {
            // SAFETY: plain kill(2); these are processes inside a dead run's namespace.
            unsafe { libc::kill(pid, signal) };
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Names of all `ip netns` namespaces.
pub fn list_netns() -> Result<Vec<String>> {
    let out = checked(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .context("cannot run ip")?,
        "ip netns list",
    )?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Runs `f` on a new thread that has entered network namespace `ns` (only that thread
/// does), and returns its result. Sockets created inside belong to `ns`.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let ns_owned = ns.to_string();
    thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter_netns(&ns_owned)?;
            f()
        })
        .context("cannot spawn a thread")?
        .join()
        .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
}

/// Moves the calling thread into network namespace `ns` (setns(2) with CLONE_NEWNET).
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: setns(2) on a valid namespace fd; affects the calling thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    Ok(())
}

fn create_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    Ok(())
}

fn delete_netns(ns: &str) -> Result<()> {
    if !Path::new(NETNS_RUN_DIR).join(ns).exists() {
        return Ok(());
    }
    ip(&["netns", "del", ns]).map(drop)
}

/// Sets sysctls inside a namespace (`ip netns exec NS sysctl -q -w k=v ...`).
pub fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let assignments: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["sysctl", "-q", "-w"];
    args.extend(assignments.iter().map(String::as_str));
    checked(netns_exec(ns, &args)?, &format!("sysctl in {ns}")).map(drop)
}

/// Runs `ip ARGS...`; a non-zero exit is an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2): is it installed?")?;
    checked(out, &format!("ip {}", args.join(" ")))
}

fn netns_exec(ns: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip netns exec {ns} {}`", args.join(" ")))
}

fn checked(out: Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_of(ns: &str, ifname: &str) -> Result<String> {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", ifname])?;
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word == "link/ether" {
            if let Some(mac) = words.next() {
                return Ok(mac.to_string());
            }
        }
    }
    bail!("no MAC address for {ifname} in {ns}: {out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_carry_their_owner_pid() {
        assert_eq!(lab_owner_pid("bsc1234x0-client"), Some(1234));
        assert_eq!(lab_owner_pid("bsc1234x17-sw"), Some(1234));
        assert_eq!(lab_owner_pid("bsc1234x17-demo"), Some(1234));
        assert_eq!(lab_owner_pid("bscfoo"), None);
        assert_eq!(lab_owner_pid("bsc12x-sw"), None);
        assert_eq!(lab_owner_pid("other1234x0-sw"), None);
        assert_eq!(lab_owner_pid("bsc1234x0"), None);
    }

    #[test]
    fn process_identity_is_read_from_proc() {
        assert_eq!(parse_ns_link("net:[4026532281]"), Some(4_026_532_281));
        assert_eq!(parse_ns_link("mnt:[4026532281]"), None);
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(uptime_ticks("12345.67", 100), Some(1_234_567));
        assert_eq!(uptime_ticks("12345.6", 100), Some(1_234_560));
        assert_eq!(uptime_ticks("12345", 1000), Some(12_345_000));
        assert_eq!(uptime_ticks("x.5", 100), None);
        let own = start_ticks(std::process::id()).expect("our own start time");
        assert!(own <= ticks_since_boot().expect("uptime"));
    }
}
