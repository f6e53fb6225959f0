//! The controller: the daemon's state and the only owner of the datapath.
//!
//! It runs on its own thread as an actor: the HTTP API, the signal handler and the health
//! supervisor (through the daemon) send it [`Request`]s through its [`inbox`] (changes
//! ahead of observers) and get answers on one-shot channels, so the datapath is never
//! touched from two places at once. Every change
//! (reload, runtime weight, health) goes the same way:
//!
//! ```text
//! Config (file) --overrides--> Config --health::plan_with_health(health, previous)--> Plan
//!     --Datapath::apply (only the difference)--> maps
//! ```
//!
//! The pure parts (`effective_config`, `diff`, `retain_overrides`, `find_backend`,
//! `simulate`, `rates`) are plain functions tested without root.
//!
//! | module | what |
//! |---|---|
//! | this one | the [`Controller`]'s state and what it is started with |
//! | `controller` | its life: start (load or adopt, plan, attach), the request loop, stop |
//! | [`inbox`] | the requests' queues: changes first, observers bounded (503 beyond) |
//! | `commit` | a config planned under the runtime state, written into the maps |
//! | `requests` | the [`Request`]s it answers, their errors; weights and health |
//! | `reload` | a reload, and what changed between two configurations |
//! | `runtime` | overrides and health on top of the config (pure) |
//! | `simulate` | which backend a flow gets, and why (pure) |
//! | `rates` | counters sampled, per-second rates |
//! | [`snapshot`] | what the daemon shows (status, API, metrics), read at request time |
//! | `load` | a config loaded as the daemon takes it, checked against the node |
//! | `node` | what a config asks of the node: sysctls, tunnel sources, neighbours |
//! | `announcing` | `announce:`: the decisions after each change, applied to the routing table |

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use lb_common::Counters;
use tokio::sync::watch;

use crate::{
    config::{Config, ParseCache},
    datapath::{
        pins::{PinDir, StateText},
        Datapath,
    },
    health::HealthMap,
    plan::Plan,
};

mod announcing;
mod commit;
mod controller;
pub mod inbox;
mod load;
mod node;
mod rates;
mod reload;
mod requests;
mod runtime;
mod simulate;
pub mod snapshot;
mod synced;
#[cfg(test)]
mod tests;

pub use announcing::{vip_facts, AnnounceStatus, VipAnnouncement};
pub use load::{check_host, config_path, host_facts, load_config, load_config_cached};
pub use node::{
    dr_backend_addresses, missing_dr_macs, prepare_interfaces, tunnel_sources, warm_routed_backends,
};
pub use rates::rates;
use rates::RateTracker;
pub use reload::{diff, gone_backends, restart_only_changes, ConfigDiff, ReloadReport};
pub use requests::{ControlError, Handle, Request, WeightChange};
pub use runtime::{
    backend_keys, effective, effective_config, find_backend, planning_input, retain_overrides,
    same_for_datapath, BackendKey, Effective, Override, Overrides, Runtime,
};
pub use simulate::{parse_protocol, simulate, FlowLookups, SimulateAnswer};
use snapshot::{Reloads, VrrpSource};
pub use synced::{seconds_ago, shared as sync_shared, PeerStatus, SyncStatus};

/// How long to wait for the kernel to resolve backends' MACs at start, and on a change.
const RESOLVE_WAIT_START: Duration = Duration::from_secs(3);
const RESOLVE_WAIT_CHANGE: Duration = Duration::from_secs(1);
/// How often MACs are re-read (faster while some `dr` backend still has none).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const REFRESH_MISSING_EVERY: Duration = Duration::from_secs(2);
/// How long one snapshot answers every `/metrics` and API request (a flood of them costs
/// the controller a few snapshots, not one each).
const SNAPSHOT_SHARED_FOR: Duration = Duration::from_millis(200);
/// Rates are computed over this interval.
const RATE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the connection table is walked: idle flows expire, active-connection counts
/// are rewritten (see `Datapath::reconcile`).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Told of each configuration a reload applied (shared with the controller: no copy of
/// 100,000 backends per reload).
pub type OnReload = Box<dyn Fn(&Arc<Config>) + Send>;

pub struct Controller {
    path: PathBuf,
    /// The configuration as the file says.
    config: Arc<Config>,
    /// The file's services by the text of their item (see `Start::parse_cache`).
    parse_cache: ParseCache,
    /// The state file's text, kept per service between writes.
    state_text: StateText,
    runtime: Runtime,
    /// What the maps hold.
    plan: Arc<Plan>,
    missing_macs: Vec<IpAddr>,
    datapath: Datapath,
    pins: Option<PinDir>,
    adopted: bool,
    interfaces: Vec<String>,
    /// How XDP runs on each of `interfaces`, as the kernel said after attaching.
    xdp_modes: Vec<String>,
    reloads: Reloads,
    rates: RateTracker,
    /// Counts of backends that left the plan (down, removed) and may come back under a
    /// new id: added to the new id's counts so that their counters never go backwards.
    retired: HashMap<BackendKey, Counters>,
    vrrp: VrrpSource,
    /// The health checks' current map (`HealthSupervisor::subscribe`), read for status and
    /// metrics, and to know whether a newer change is on its way.
    health_source: Option<watch::Receiver<HealthMap>>,
    /// Told of every configuration a reload applied (health checks, VRRP).
    on_reload: Option<OnReload>,
    ready: Arc<AtomicBool>,
    /// Live connection-table entries at the last walk (`Datapath::reconcile`).
    conntrack_live: u64,
    heartbeat: Option<Heartbeat>,
    /// `announce:`'s routing table; `None` without the section.
    announcer: Option<announcing::Announcer>,
    /// `sync:` state shared with its sender and receiver; `None` without sync.
    sync: Option<Arc<crate::sync::Shared>>,
    timers: Timers,
    /// The last snapshot built, shared by observers for [`SNAPSHOT_SHARED_FOR`].
    shared_snapshot: Option<(Instant, Arc<snapshot::Snapshot>)>,
}

/// When the controller's periodic work is next due.
struct Timers {
    refresh: Instant,
    sample: Instant,
    reconcile: Instant,
    /// The next heartbeat (the service manager's watchdog), when there is one.
    beat: Instant,
}

impl Timers {
    /// Rates and the connection table at once, MACs after [`REFRESH_EVERY`].
    fn starting() -> Timers {
        let now = Instant::now();
        Timers {
            refresh: now + REFRESH_EVERY,
            sample: now,
            reconcile: now,
            beat: now,
        }
    }
}

/// What the controller is started with.
pub struct Start {
    pub path: PathBuf,
    pub config: Config,
    /// The services parsed from `path` (`Config::load_cached`): a reload re-parses only
    /// the items of the file that changed. Empty: the first reload parses everything.
    pub parse_cache: ParseCache,
    /// Pin the datapath under `/sys/fs/bpf/bascule` (and adopt what is pinned there).
    pub pinned: bool,
    /// The VRRP instances' status (`snapshot::no_vrrp()` without VRRP).
    pub vrrp: VrrpSource,
    /// The health checks' map (`HealthSupervisor::subscribe()`); `None`: every backend up.
    pub health: Option<watch::Receiver<HealthMap>>,
    /// Called with the new configuration after each successful reload.
    pub on_reload: Option<OnReload>,
    pub ready: Arc<AtomicBool>,
    /// Called from the controller's own loop every `Heartbeat::every` (the service
    /// manager's watchdog): it stops when the controller hangs.
    pub heartbeat: Option<Heartbeat>,
    /// Where the announcement table's netlink I/O runs (`announce:`); `None`: the
    /// configuration's `announce:` is not applied.
    pub io: Option<tokio::runtime::Handle>,
    /// `sync:`: shared with the sync sender and receiver (`serve` starts them once the
    /// controller has put the datapath's report ring in it). `None` without sync.
    pub sync: Option<Arc<crate::sync::Shared>>,
}

/// A call the controller's loop makes at a steady period, between requests.
pub struct Heartbeat {
    pub every: Duration,
    pub beat: Box<dyn FnMut() + Send>,
}
