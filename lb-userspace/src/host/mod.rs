//! What the kernel knows about the node's network.
pub mod interfaces;
