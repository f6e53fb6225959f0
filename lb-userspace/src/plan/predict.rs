//! Which service and backend a flow gets, computed as the datapath computes it, for
//! `bascule simulate` and for tests that predict the datapath's choice.

use lb_common::{FlowKey, ServiceKey, NO_BACKEND};

use super::{Plan, PlannedService};

/// The service a packet of `flow` is balanced by: the one of its destination address, port
/// and protocol, else the all-ports one of its address and protocol (the datapath's order).
pub fn service_for<'p>(plan: &'p Plan, flow: &FlowKey) -> Option<&'p PlannedService> {
    let exact = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    let any_port = ServiceKey { port: 0, ..exact };
    let named = |key: ServiceKey| plan.services.iter().find(|s| s.keys().any(|k| *k == key));
    named(exact).or_else(|| named(any_port))
}

/// The backend a new flow gets: the same computation as the datapath's (flow hash, then
/// the service's Maglev slot). Returns the service and the backend id, if any.
pub fn predict<'a>(plan: &'a Plan, flow: &FlowKey) -> Option<(&'a PlannedService, u32)> {
    let svc = service_for(plan, flow)?;
    let ports = lb_common::hash::ports_word(flow.sport, flow.dport);
    let hash = lb_common::hash::flow_hash(&flow.src, &flow.dst, ports, flow.proto);
    let id = svc.table.get((hash % svc.info.table_size) as usize)?;
    (id != NO_BACKEND).then_some((svc, id))
}
