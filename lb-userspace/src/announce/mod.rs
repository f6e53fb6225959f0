//! Scale-out: what this node announces to the routers. bascule speaks no BGP: it keeps,
//! in a kernel routing table of its own, one blackhole route per VIP it should announce
//! now, and a routing daemon (BIRD, FRR) learns that table and announces its routes.
//!
//! | module | what |
//! |---|---|
//! | [`decide`] | pure: per VIP, announced or why not; the changes from the current set |
//! | [`routes`] | rtnetlink: the table's routes of bascule's protocol, kept as wanted |
//!
//! This module depends on no other part of bascule: the controller gives it plain facts.

pub mod decide;
pub mod routes;

pub use decide::{
    decide, diff, vip_facts, wanted, Change, Decisions, Diff, NodeFacts, Reason, Selection,
    ServiceFacts, VipFacts,
};
pub use routes::{AnnounceTable, Reconciled, Route};
