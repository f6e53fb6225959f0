//! Where the datapath outlives the daemon: pinned BPF objects under
//! `/sys/fs/bpf/bascule/<netns inode>/` and a small state file under
//! `/run/bascule/<netns inode>/`, one tree per network namespace so that several nodes can
//! share a host (as in the test labs).
//!
//! ```text
//! /sys/fs/bpf/bascule/4026532290/
//!     maps/SERVICES, maps/CONNTRACK, ...   every map of the XDP object
//!     links/eth0                           the XDP link of each interface
//!     programs/bascule_xdp                 the program the links run (for bpftool)
//! /run/bascule/4026532290/
//!     lock                                 flock(2): one daemon per network namespace
//!     state.json                           ids of services and backends, weight overrides
//! ```
//!
//! A pinned link keeps its program attached, and pinned maps keep their contents, after
//! the daemon exits. The next daemon adopts them when the state file says they belong to
//! this very namespace (its cookie, which the kernel never reuses, unlike an inode) and
//! were written by a compatible build; otherwise it starts over.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{Plan, PlannedBackend, PlannedService};

/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// bascule's tree inside bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/bascule";
/// bascule's runtime state (tmpfs: gone at reboot, like bpffs).
pub const RUN_ROOT: &str = "/run/bascule";
/// statfs(2) f_type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin tree and state directory of the current network namespace, locked.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
    run: PathBuf,
    netns_cookie: u64,
    /// Held for the daemon's lifetime: a second daemon in this namespace fails to lock.
    _lock: File,
}

/// What the state file remembers between two daemons.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// `SO_NETNS_COOKIE` of the namespace that wrote it.
    pub netns_cookie: u64,
    /// Digest of the XDP object that created the maps: another build may lay them out
    /// differently.
    pub object_digest: u64,
    pub conntrack_entries: u32,
    pub services: Vec<SavedService>,
    pub backends: Vec<SavedBackend>,
    /// Runtime weights set through the API (see `control::Overrides`).
    #[serde(default)]
    pub overrides: Vec<SavedOverride>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedService {
    pub name: String,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBackend {
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOverride {
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub config_weight: u32,
}

/// One backend as the state file names it: address, port, id.
type Entry = (IpAddr, u16, u32);

/// The state file's text for successive plans, each service's backends kept as JSON
/// between writes: a service whose backends (addresses, ports, ids) did not change is not
/// serialized again (at 100,000 backends the file is megabytes). The text is what
/// `serde_json` makes of the `SavedState`.
///
/// A plan whose every service and backend the file already names with the same id (same
/// overrides and header) is not written again: after a reload that only removed
/// backends, or brought one back under its old id, the file also names some that left.
/// That is harmless: the next daemon keeps the ids of what its configuration has and
/// ignores the rest, and no id is named twice, since every write is one plan's (an id
/// handed to another backend is a new entry, so the file is rewritten).
#[derive(Default)]
pub struct StateText {
    /// Each service's backends as last written, and their text.
    by_service: HashMap<String, (Vec<Entry>, String)>,
    /// The rest of what was last written (no backends).
    written: Option<SavedState>,
}

impl StateText {
    /// The text of `head` with the backends of `plan` (`head.backends` is ignored), or
    /// `None` when the file last written already holds every id of the plan.
    pub fn of(&mut self, head: &SavedState, plan: &Plan) -> Result<Option<String>> {
        // Backends of one service are consecutive in a plan. Compared as they are: only a
        // service whose backends changed is copied (a reload of one service among 1,000
        // copies one).
        let groups: Vec<&[PlannedBackend]> = plan
            .backends
            .chunk_by(|a, b| a.service == b.service)
            .collect();
        if self.holds(head, &groups) {
            return Ok(None);
        }
        let mut kept = HashMap::with_capacity(groups.len());
        let mut backends = String::new();
        for group in groups {
            let service = &*group[0].service;
            let (name, (key, text)) = match self.by_service.remove_entry(service) {
                Some((name, (key, text))) if key.iter().copied().eq(entries(group)) => {
                    (name, (key, text))
                }
                _ => {
                    let items: Result<Vec<String>, _> = entries(group)
                        .map(|(address, port, id)| {
                            serde_json::to_string(&SavedBackend {
                                service: service.to_string(),
                                address,
                                port,
                                id,
                            })
                        })
                        .collect();
                    (
                        service.to_string(),
                        (entries(group).collect(), items?.join(",")),
                    )
                }
            };
            if !backends.is_empty() {
                backends.push(',');
            }
            backends.push_str(&text);
            kept.insert(name, (key, text));
        }
        self.by_service = kept;
        self.written = Some(SavedState {
            backends: Vec::new(),
            ..head.clone()
        });
        Ok(Some(format!(
            "{{\"netns_cookie\":{},\"object_digest\":{},\"conntrack_entries\":{},\"services\":{},\"backends\":[{backends}],\"overrides\":{}}}",
            head.netns_cookie,
            head.object_digest,
            head.conntrack_entries,
            serde_json::to_string(&head.services)?,
            serde_json::to_string(&head.overrides)?,
        )))
    }

    /// Whether the file last written names every service and backend of `groups` (one
    /// service's backends each) and `head` with the same ids, and has the same header and
    /// overrides.
    fn holds(&self, head: &SavedState, groups: &[&[PlannedBackend]]) -> bool {
        let Some(w) = &self.written else {
            return false;
        };
        if (w.netns_cookie, w.object_digest, w.conntrack_entries)
            != (
                head.netns_cookie,
                head.object_digest,
                head.conntrack_entries,
            )
            || w.overrides != head.overrides
        {
            return false;
        }
        let services: std::collections::HashSet<(&str, u32)> =
            w.services.iter().map(|s| (s.name.as_str(), s.id)).collect();
        if !head
            .services
            .iter()
            .all(|s| services.contains(&(s.name.as_str(), s.id)))
        {
            return false;
        }
        groups
            .iter()
            .all(|group| match self.by_service.get(&*group[0].service) {
                Some((written, _)) if written.iter().copied().eq(entries(group)) => true,
                Some((written, _)) => {
                    let written: std::collections::HashSet<&Entry> = written.iter().collect();
                    entries(group).all(|k| written.contains(&k))
                }
                None => false,
            })
    }
}

/// The state file's entries of one service's backends.
fn entries(group: &[PlannedBackend]) -> impl Iterator<Item = Entry> + '_ {
    group.iter().map(|b| (b.address, b.port, b.id))
}

impl SavedState {
    /// The ids of a plan, to be found again by the next daemon.
    pub fn ids_of(plan: &Plan) -> (Vec<SavedService>, Vec<SavedBackend>) {
        let services = plan
            .services
            .iter()
            .map(|s| SavedService {
                name: s.name.clone(),
                id: s.info.id,
            })
            .collect();
        let backends = plan
            .backends
            .iter()
            .map(|b| SavedBackend {
                service: b.service.to_string(),
                address: b.address,
                port: b.port,
                id: b.id,
            })
            .collect();
        (services, backends)
    }

    /// A plan holding only the saved ids: what `plan::plan` needs as `previous` so that
    /// services and backends get back the ids the pinned connection table refers to.
    pub fn id_plan(&self) -> Plan {
        Plan {
            settings: Default::default(),
            services: self
                .services
                .iter()
                .map(|s| PlannedService {
                    name: s.name.clone(),
                    key: Default::default(),
                    more_keys: Vec::new(),
                    info: lb_common::ServiceInfo {
                        id: s.id,
                        ..Default::default()
                    },
                    table: Default::default(),
                    backends: Vec::new(),
                    table_source: None,
                    source: None,
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|b| PlannedBackend {
                    id: b.id,
                    service: b.service.as_str().into(),
                    address: b.address,
                    port: b.port,
                    info: Default::default(),
                })
                .collect(),
        }
    }
}

impl PinDir {
    /// Opens (creating it if needed) the tree of the current network namespace: mounts
    /// bpffs at `/sys/fs/bpf` if nothing is mounted there, and takes the namespace's lock.
    pub fn open() -> Result<PinDir> {
        let inode = netns_inode()?;
        let cookie = netns_cookie()?;
        ensure_bpffs()?;
        let root = Path::new(PIN_ROOT).join(inode.to_string());
        let run = Path::new(RUN_ROOT).join(inode.to_string());
        for dir in [root.join("maps"), root.join("links"), root.join("programs")] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::create_dir_all(&run).with_context(|| {
            format!(
                "cannot create {} (the daemon keeps its state there)",
                run.display()
            )
        })?;
        let lock_path = run.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        // SAFETY: flock(2) on a file we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another bascule daemon already runs in this network namespace (it holds {}); stop it first",
                lock_path.display()
            );
        }
        Ok(PinDir {
            root,
            run,
            netns_cookie: cookie,
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn programs(&self) -> PathBuf {
        self.root.join("programs")
    }

    pub fn netns_cookie(&self) -> u64 {
        self.netns_cookie
    }

    fn state_path(&self) -> PathBuf {
        self.run.join("state.json")
    }

    /// The state a previous daemon left, if any and readable.
    pub fn read_state(&self) -> Option<SavedState> {
        let text = fs::read_to_string(self.state_path()).ok()?;
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(file = %self.state_path().display(), "ignoring an unreadable state file: {e}");
                None
            }
        }
    }

    /// Replaces the state file atomically (write, then rename).
    pub fn write_state(&self, state: &SavedState) -> Result<()> {
        self.write_state_text(&serde_json::to_string(state)?)
    }

    /// Replaces the state file with `text` (a `SavedState` as JSON, see [`StateText`]).
    pub fn write_state_text(&self, text: &str) -> Result<()> {
        let tmp = self.run.join("state.json.tmp");
        fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.state_path())
            .with_context(|| format!("cannot write {}", self.state_path().display()))
    }

    /// Whether any BPF object is pinned here.
    pub fn has_pins(&self) -> bool {
        [self.maps(), self.links(), self.programs()]
            .iter()
            .any(|d| fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
    }

    /// Unpins every object (links first: that detaches the programs) and forgets the state
    /// file, keeping the directories and the lock.
    pub fn clear(&self) -> Result<()> {
        for dir in [self.links(), self.programs(), self.maps()] {
            remove_entries(&dir)?;
        }
        match fs::remove_file(self.state_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.state_path().display()))
            }
            _ => Ok(()),
        }
    }

    /// Removes the whole tree and the state directory.
    pub fn remove(self) -> Result<()> {
        self.clear()?;
        for dir in [
            self.links(),
            self.programs(),
            self.maps(),
            self.root.clone(),
        ] {
            let _ = fs::remove_dir(&dir);
        }
        let _ = fs::remove_file(self.run.join("lock"));
        let _ = fs::remove_dir(&self.run);
        Ok(())
    }
}

fn remove_entries(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        fs::remove_file(&path).with_context(|| format!("cannot unpin {}", path.display()))?;
    }
    Ok(())
}

/// The inode of the calling thread's network namespace (`/proc/thread-self/ns/net`:
/// `/proc/self` is the main thread's, which a thread that entered another namespace
/// does not share): names its tree.
pub fn netns_inode() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata("/proc/thread-self/ns/net")
        .context("cannot read /proc/thread-self/ns/net")?
        .ino())
}

/// The kernel's cookie of the current network namespace: unlike the inode it is never
/// reused, so a state file of a deleted namespace is never mistaken for ours.
pub fn netns_cookie() -> Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .context("cannot open a socket to read the network namespace cookie")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt with a u64 buffer of the given length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context(
            "cannot read the network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14)",
        );
    }
    Ok(cookie)
}

fn is_bpffs(path: &str) -> Result<bool> {
    let c = std::ffi::CString::new(path).expect("no NUL in a constant path");
    // SAFETY: statfs(2) into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("cannot statfs {path}"));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at `/sys/fs/bpf` unless one is there already.
pub fn ensure_bpffs() -> Result<()> {
    if is_bpffs(BPFFS)? {
        return Ok(());
    }
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    let mode = c"mode=0700";
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            mode.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context(
            "/sys/fs/bpf is not a bpffs and mounting one failed (needs CAP_SYS_ADMIN): mount it at boot (`mount -t bpf bpf /sys/fs/bpf`)",
        );
    }
    if private_mount_namespace() {
        tracing::warn!(
            "mounted bpffs at /sys/fs/bpf inside a private mount namespace (e.g. `ip netns exec`): \
             pinned state ends with this namespace, so a restart cannot adopt the datapath; \
             mount bpffs on the host, or enter only the network namespace (nsenter --net)"
        );
    } else {
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    Ok(())
}

fn private_mount_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        fs::metadata("/proc/self/ns/mnt"),
        fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a.ino() != b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        plan::{plan, MacTable, TunnelSources},
    };

    const YAML: &str = "node:\n  interfaces: [{name: eth0}]\nservices:\n  - name: a\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends: [{address: 10.0.0.11}, {address: 10.0.0.12}]\n  - name: b\n    vip: 10.0.0.2\n    port: 80\n    forwarding: tun\n    backends: [{address: 10.0.0.13}]\n";

    #[test]
    fn state_text_is_the_json_of_the_state() {
        let config = Config::parse(YAML, "t.yaml").unwrap();
        let first = plan(&config, &MacTable::new(), TunnelSources::default(), None).unwrap();
        let state = |p: &Plan| {
            let (services, backends) = SavedState::ids_of(p);
            SavedState {
                netns_cookie: 7,
                object_digest: 9,
                conntrack_entries: 100,
                services,
                backends,
                overrides: vec![SavedOverride {
                    service: "a".into(),
                    address: "10.0.0.11".parse().unwrap(),
                    port: 80,
                    weight: 3,
                    config_weight: 1,
                }],
            }
        };
        let mut text = StateText::default();
        assert_eq!(
            text.of(&state(&first), &first).unwrap(),
            Some(serde_json::to_string(&state(&first)).unwrap())
        );
        assert_eq!(
            text.of(&state(&first), &first).unwrap(),
            None,
            "nothing new"
        );
        // A backend leaves: the file still names it, and is not rewritten.
        let without = |yaml: &str| {
            let config = Config::parse(yaml, "t.yaml").unwrap();
            move |previous: &Plan| {
                plan(
                    &config,
                    &MacTable::new(),
                    TunnelSources::default(),
                    Some(previous),
                )
                .unwrap()
            }
        };
        let second = without(&YAML.replace("{address: 10.0.0.11}, ", ""))(&first);
        assert_eq!(text.of(&state(&second), &second).unwrap(), None);
        // It comes back under its old id: still nothing new.
        let third = without(YAML)(&second);
        assert_eq!(third.backends, first.backends);
        assert_eq!(text.of(&state(&third), &third).unwrap(), None);
        // Another backend takes the freed id: written, without the one that left.
        let fourth = without(&YAML.replace("10.0.0.11", "10.0.0.14"))(&second);
        let written = text
            .of(&state(&fourth), &fourth)
            .unwrap()
            .expect("a new id");
        assert_eq!(written, serde_json::to_string(&state(&fourth)).unwrap());
        assert_eq!(
            serde_json::from_str::<SavedState>(&written).unwrap(),
            state(&fourth)
        );
        // An override changes: written.
        let mut other = state(&fourth);
        other.overrides.clear();
        assert!(text.of(&other, &fourth).unwrap().is_some());
    }

    #[test]
    fn saved_ids_give_back_the_same_ids_after_a_reordering() {
        let config = Config::parse(YAML, "t.yaml").unwrap();
        let first = plan(&config, &MacTable::new(), TunnelSources::default(), None).unwrap();
        let (services, backends) = SavedState::ids_of(&first);
        let saved = SavedState {
            services,
            backends,
            ..Default::default()
        };
        let text = serde_json::to_string(&saved).unwrap();
        let back: SavedState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        // The same services in another order: without the saved ids, b would take id 0.
        let mut swapped = config.clone();
        swapped.services.reverse();
        let again = plan(
            &swapped,
            &MacTable::new(),
            TunnelSources::default(),
            Some(&back.id_plan()),
        )
        .unwrap();
        let fresh = plan(&swapped, &MacTable::new(), TunnelSources::default(), None).unwrap();
        for svc in &first.services {
            let id = |p: &Plan| {
                p.services
                    .iter()
                    .find(|s| s.name == svc.name)
                    .map(|s| s.info.id)
            };
            assert_eq!(id(&again), Some(svc.info.id), "service {}", svc.name);
        }
        for b in &first.backends {
            let id = |p: &Plan| {
                p.backends
                    .iter()
                    .find(|x| x.address == b.address)
                    .map(|x| x.id)
            };
            assert_eq!(id(&again), Some(b.id), "backend {}", b.address);
        }
        assert_ne!(
            fresh.services[0].info.id, again.services[0].info.id,
            "the test must reorder ids"
        );
    }
}
