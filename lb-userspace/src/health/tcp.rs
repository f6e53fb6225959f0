//! `tcp`: the backend accepts a TCP connection on the checked port.

use std::net::SocketAddr;

use super::check::{connect, Deadline};

pub(super) struct TcpCheck {
    pub target: SocketAddr,
}

impl TcpCheck {
    pub async fn attempt(&self, deadline: &Deadline) -> Result<(), String> {
        let stream = connect(self.target, deadline).await?;
        // Close with a reset: nothing was said, and no TIME_WAIT piles up on this node
        // (one per check per backend, for a minute) when thousands are checked.
        let _ = stream.set_zero_linger();
        Ok(())
    }
}
