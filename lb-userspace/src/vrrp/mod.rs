//! VRRP.
pub mod packet;
pub mod state;
