//! The XDP datapath as userspace sees it: load the embedded object, attach it, write a
//! `Plan` into its maps, read its counters. Loaded with [`Datapath::load_pinned`], its maps,
//! program and links live under a pin tree (see [`pins`]) and outlive the daemon.
//!
//! | module | what |
//! |---|---|
//! | `load` | the embedded object loaded, plain or with its maps pinned; pinned maps checked |
//! | `attach` | XDP links made, adopted (pinned), detached or left attached |
//! | `write` | a plan written into the maps (only the difference, in a safe order) |
//! | `tables` | the lookup-table maps, filled through their mmap'd memory |
//! | `counters` | counters per service, backend, verdict and reason; active connections |
//! | `reconcile` | the connection table: lookups, the reconciling walk |
//! | [`flows`] | the set-associative tables' memory (connection table, `nat` replies) |
//! | `synced` | `sync:`: the report ring, its drops, peers' flows inserted and removed |
//! | [`pins`] | the pin tree and the state file a restarted daemon adopts |
//! | `syscall` | the bpf(2) calls aya does not make (batches, inner maps) |
//! | `clock` | the datapath's clock: calibrated at load, read from userspace |
//! | [`decap`] | `bascule decap`'s tc program (a separate object) |

use std::{path::PathBuf, sync::Arc};

use anyhow::{anyhow, Result};
use aya::{
    programs::{links::FdLink, xdp::XdpLinkId},
    Ebpf,
};

use crate::plan::Plan;

mod attach;
mod clock;
mod counters;
pub mod decap;
pub mod flows;
mod load;
pub mod pins;
mod reconcile;
mod synced;
mod syscall;
mod tables;
mod write;

pub use clock::monotonic_ns;
pub use load::{adoption, object_digest, pinned_maps_mismatch};
pub use reconcile::Reconciled;

/// The XDP object built by `build.rs` from `lb-ebpf`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
/// The backend-side decapsulation object (tc ingress).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

pub const XDP_PROGRAM: &str = "bascule_xdp";

/// How to attach to an interface, as the config's `xdp_mode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native if the driver has it, generic otherwise.
    Auto,
    Native,
    Generic,
}

pub struct Datapath {
    ebpf: Ebpf,
    links: Vec<(String, Attachment)>,
    /// The plan the maps hold, to apply only differences.
    applied: Option<Arc<Plan>>,
    /// Where links and the program are pinned, when loaded by `load_pinned`.
    pins: Option<PinPaths>,
    /// The connection table mapped whole for `sync:` (peers' entries inserted), once the
    /// first one came.
    synced: Option<flows::FlowMemory>,
}

/// How an interface's XDP link is held.
enum Attachment {
    /// Owned by the program object: detached when it is dropped.
    Owned(XdpLinkId),
    /// Pinned: stays attached, even after this process exits, until the pin is removed.
    Pinned { link: FdLink, pin: PathBuf },
}

struct PinPaths {
    links: PathBuf,
}

impl Datapath {
    pub(super) fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }
}
