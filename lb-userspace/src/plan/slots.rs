//! The `SERVICE_ENTRIES` slots (by service id) a plan holds, and those a new plan changes:
//! the datapath reads an established flow's service there (see `lb_common::ServiceEntry`).

use std::collections::{BTreeMap, HashMap, HashSet};

use lb_common::{ServiceEntry, MAX_SERVICES};

use super::PlannedService;

/// Each service's slot of `SERVICE_ENTRIES` (by id): its key and info, and whether it is
/// an all-ports service that port services of the same VIP and protocol shadow (see
/// `ServiceEntry`).
pub fn service_entries(services: &[PlannedService]) -> Vec<(u32, ServiceEntry)> {
    let with_ports: HashSet<(u8, [u32; 4], u8)> = services
        .iter()
        .flat_map(|s| s.keys())
        .filter(|k| k.port != 0)
        .map(|k| (k.family, k.addr, k.proto))
        .collect();
    services
        .iter()
        .map(|s| {
            let shadowed =
                s.key.port == 0 && with_ports.contains(&(s.key.family, s.key.addr, s.key.proto));
            let entry = ServiceEntry {
                key: s.key,
                shadowed: u32::from(shadowed),
                _pad: 0,
                info: s.info,
            };
            (s.info.id, entry)
        })
        .collect()
}

/// What to write to `SERVICE_ENTRIES` when `now` replaces `before`: the slots whose entry
/// changed, and cleared ones for the ids no service has any more. With nothing before
/// (a daemon's first write), every unplanned id is cleared: adopted maps may hold a
/// previous daemon's slots.
pub fn service_slot_writes(
    now: &[PlannedService],
    before: &[PlannedService],
) -> Vec<(u32, ServiceEntry)> {
    let old: HashMap<u32, ServiceEntry> = service_entries(before).into_iter().collect();
    let new: BTreeMap<u32, ServiceEntry> = service_entries(now).into_iter().collect();
    let gone: Vec<u32> = if before.is_empty() {
        (0..MAX_SERVICES).collect()
    } else {
        old.keys().copied().collect()
    };
    let mut writes: BTreeMap<u32, ServiceEntry> = gone
        .into_iter()
        .filter(|id| !new.contains_key(id))
        .map(|id| (id, ServiceEntry::default()))
        .collect();
    writes.extend(new.into_iter().filter(|(id, e)| old.get(id) != Some(e)));
    writes.into_iter().collect()
}
