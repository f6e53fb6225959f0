//! `sync:` in the controller: the report ring handed to the sender, the directory kept
//! in step with the plan, peers' entries resolved to this node's ids and written, and
//! what status, metrics and `GET /api/v1/sync` show of it.

use std::{
    net::IpAddr,
    sync::{atomic::Ordering, Arc},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::Controller;
use crate::{
    datapath::monotonic_ns,
    sync::{self, Apply, Directory, Entry, Reject},
};

/// `sync:` as the daemon shows it (`None` in a snapshot when not configured).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub peers: Vec<PeerStatus>,
    /// Entries sent (each once, whatever the number of peers).
    pub sent: u64,
    /// Entries received in authenticated, fresh datagrams.
    pub received: u64,
    /// Entries written into (or removed from) the connection table.
    pub applied: u64,
    /// Refused: datagrams (auth, replay, malformed) and entries (the others), by reason.
    pub rejected: Vec<(String, u64)>,
    /// Reports the datapath dropped because its ring was full.
    pub dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    /// Unix time (seconds) of its last accepted datagram; `None`: never heard.
    pub last_seen: Option<f64>,
    pub datagrams: u64,
}

impl Controller {
    /// Hands the datapath's report ring to the sender and names the plan for it.
    pub(super) fn start_sync(&mut self) -> anyhow::Result<()> {
        let Some(shared) = self.sync.clone() else {
            return Ok(());
        };
        let ring = self.datapath.take_sync_ring()?;
        *shared.ring.lock().unwrap_or_else(|e| e.into_inner()) = Some(ring);
        shared.set_directory(Directory::of(&self.plan));
        Ok(())
    }

    /// After every commit: the sender and the receiver read the new plan.
    pub(super) fn sync_plan_changed(&self) {
        if let Some(shared) = &self.sync {
            shared.set_directory(Directory::of(&self.plan));
        }
    }

    /// A peer's entries: each resolved to this node's ids and written, or counted with
    /// the reason it is ignored.
    pub(super) fn apply_synced(&mut self, entries: Vec<Entry>) {
        let Some(shared) = self.sync.clone() else {
            return;
        };
        let directory = shared.directory();
        let now = monotonic_ns();
        let stats = &shared.stats;
        for e in &entries {
            let done = match directory.resolve(e, now) {
                Ok(Apply::Insert { entry, persist }) => {
                    self.datapath.insert_synced(entry, persist).map(|_| ())
                }
                Ok(Apply::Remove { key }) => self.datapath.remove_synced(&key).map(|_| ()),
                Err(why) => {
                    stats.reject(why, 1);
                    continue;
                }
            };
            match done {
                Ok(()) => {
                    stats.applied.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("sync: cannot write a peer's flow: {e:#}"),
            }
        }
    }

    /// Every live connection-table entry named for a peer (bulk sync).
    pub(super) fn synced_table(&mut self) -> Vec<Entry> {
        let Some(shared) = self.sync.clone() else {
            return Vec::new();
        };
        let directory = shared.directory();
        match self.datapath.flow_entries() {
            Ok(flows) => flows
                .iter()
                .filter_map(|f| directory.name_flow(f))
                .collect(),
            Err(e) => {
                tracing::warn!("sync: cannot list the connection table: {e:#}");
                Vec::new()
            }
        }
    }

    pub(super) fn sync_status(&mut self) -> Option<SyncStatus> {
        let shared = self.sync.clone()?;
        let configured = self.config.sync.as_ref().map_or(&[][..], |s| &s.peers[..]);
        let stats = &shared.stats;
        let peers = stats
            .peers(configured)
            .into_iter()
            .map(|(address, p)| PeerStatus {
                address,
                last_seen: p.last_seen.map(|t| {
                    t.duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64()
                }),
                datagrams: p.datagrams,
            })
            .collect();
        Some(SyncStatus {
            peers,
            sent: stats.sent.load(Ordering::Relaxed),
            received: stats.received.load(Ordering::Relaxed),
            applied: stats.applied.load(Ordering::Relaxed),
            rejected: stats
                .rejected()
                .into_iter()
                .map(|(r, n): (Reject, u64)| (r.label().to_string(), n))
                .collect(),
            dropped: self.datapath.sync_drops().unwrap_or(0),
        })
    }
}

/// Seconds since `last_seen` (Unix seconds), for display.
pub fn seconds_ago(last_seen: f64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    (now - last_seen).max(0.0)
}

/// The handle serve gives the controller: created before it starts.
pub fn shared() -> Arc<sync::Shared> {
    Arc::new(sync::Shared::default())
}
