//! What the kernel knows about the node's network, and what the daemon changes there:
//! interfaces and their addresses, neighbour entries, forwarding sysctls. A leaf: it
//! imports no other module of the crate (callers turn a config into its questions).
//!
//! | module | what |
//! |---|---|
//! | [`interfaces`] | interfaces (index, name, MAC) and their addresses, over rtnetlink |
//! | [`addresses`] | choices among addresses: link-local, VRRP's primary address (pure) |
//! | [`neighbours`] | ARP/NDP entries over rtnetlink, resolution provoked and awaited |
//! | [`sysctls`] | the forwarding sysctls `tun` and `nat` need |

pub mod addresses;
pub mod interfaces;
pub mod neighbours;
pub mod sysctls;
