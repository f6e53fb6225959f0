//! `sync:` connection state shared with the other LB nodes (active-active: every node
//! sends and receives). The datapath reports each new flow and each flow's end through a
//! ring buffer; a sender thread names them by address and port (`directory`) and sends
//! them, batched and authenticated (`wire`), to every peer over UDP (or once to a
//! multicast group every node joined, ignoring its own datagrams); a receiver task
//! checks what peers send (MAC, replay) and hands the entries to the controller, which
//! resolves them to this node's ids and inserts them into the connection table with the
//! datapath's write protocol.
//!
//! | module | what |
//! |---|---|
//! | [`wire`] | the datagram: encode, decode, HMAC-SHA256, replay window (pure) |
//! | [`directory`] | reports named for peers, peers' entries in this node's ids (pure) |
//! | [`key`] | `sync.key_file` read and checked |
//! | `run` | the sender thread and the receiver task |
//! | `socket` | the UDP socket: unicast, or a multicast group joined on an interface |

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::SystemTime,
};

use aya::maps::{MapData, RingBuf};

pub mod directory;
pub mod key;
mod run;
mod socket;
pub mod wire;

pub use directory::{Apply, Directory};
pub use run::{start, Running, TableSource};
pub use wire::{Entry, Reject};

/// What the sender, the receiver and the controller share.
#[derive(Default)]
pub struct Shared {
    pub stats: Stats,
    /// The plan as sync reads it, replaced by the controller after each change.
    pub directory: RwLock<Arc<Directory>>,
    /// The datapath's report ring, put here by the controller for the sender to take.
    pub ring: Mutex<Option<RingBuf<MapData>>>,
    /// Told when a peer finished sending its whole table (bulk sync).
    pub bulk_done: tokio::sync::Notify,
}

impl Shared {
    pub fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_directory(&self, d: Directory) {
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(d);
    }
}

/// Sync's counters (entries, except `auth`, `replay` and `malformed`: datagrams) and
/// when each peer was last heard from.
#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub applied: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
    peers: Mutex<HashMap<IpAddr, PeerSeen>>,
}

/// A peer as the receiver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSeen {
    /// Last accepted datagram (Unix time).
    pub last_seen: Option<SystemTime>,
    pub datagrams: u64,
}

impl Stats {
    pub fn reject(&self, why: Reject, n: u64) {
        let i = Reject::ALL.iter().position(|r| *r == why).expect("listed");
        self.rejected[i].fetch_add(n, Ordering::Relaxed);
    }

    pub fn rejected(&self) -> Vec<(Reject, u64)> {
        Reject::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn heard(&self, from: IpAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let p = peers.entry(from).or_insert(PeerSeen {
            last_seen: None,
            datagrams: 0,
        });
        p.last_seen = Some(SystemTime::now());
        p.datagrams += 1;
    }

    /// Every configured peer (never heard: `last_seen` None), and any other that sent a
    /// valid datagram.
    pub fn peers(&self, configured: &[IpAddr]) -> Vec<(IpAddr, PeerSeen)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(IpAddr, PeerSeen)> = configured
            .iter()
            .map(|a| {
                let seen = peers.get(a).copied().unwrap_or(PeerSeen {
                    last_seen: None,
                    datagrams: 0,
                });
                (*a, seen)
            })
            .collect();
        for (a, p) in peers.iter() {
            if !configured.contains(a) {
                out.push((*a, *p));
            }
        }
        out
    }
}
