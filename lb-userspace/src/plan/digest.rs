//! A node-independent fingerprint of each service's table, which `bascule check` prints so
//! that operators can compare nodes.

use std::collections::HashMap;

use super::Plan;

/// A node-independent fingerprint of each service's Maglev table (in the order of
/// `plan.services`): the hash of the backend address and port in every slot (ids differ
/// between nodes, addresses do not). The addresses are written out once for the whole plan
/// (once per service made `bascule check` quadratic: a minute at 1,000 x 100).
pub fn table_digests(plan: &Plan) -> Vec<u64> {
    let names: HashMap<u32, String> = plan
        .backends
        .iter()
        .map(|b| (b.id, b.address.to_string()))
        .collect();
    let mut bytes = Vec::new();
    plan.services
        .iter()
        .map(|svc| {
            bytes.clear();
            for id in svc.table.iter() {
                bytes.extend_from_slice(names.get(&id).map_or("-", String::as_str).as_bytes());
                bytes.push(b',');
            }
            lb_common::maglev::stable_hash(&bytes)
        })
        .collect()
}
