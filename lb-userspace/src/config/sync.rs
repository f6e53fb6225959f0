//! `sync:` connection state shared with the other LB nodes.

use std::path::PathBuf;

use super::keys::SYNC_KEYS;
use super::schema::{StateSync, DEFAULT_SYNC_PORT};
use super::yaml::{pos_of, P, Y};
use super::Cx;

impl Cx<'_> {
    pub(super) fn sync(&mut self, y: &Y, path: &P) -> Option<StateSync> {
        let o = self.obj(y, path, SYNC_KEYS)?;
        let peers_path = P::Key(path, "peers");
        let peers = self.list(o.opt("peers"), &peers_path, "addresses", Self::ip);
        let port = self.field(&o, path, "port", DEFAULT_SYNC_PORT, |cx, y, p| {
            cx.u16(y, p, 1)
        });
        let key_file = self.req_field(&o, path, "key_file", Self::string);
        for key in ["group", "interface"] {
            if let Some(v) = o.opt(key) {
                self.err(
                    pos_of(v),
                    &P::Key(path, key),
                    "multicast sync is not supported yet (this build supports: peers)",
                );
                return None;
            }
        }
        let (peers, port, key_file) = (peers?, port?, key_file?);
        if peers.is_empty() {
            self.err(
                o.pos("peers"),
                &peers_path,
                "expected at least one peer address (peers: [10.0.0.3])",
            );
            return None;
        }
        if key_file.is_empty() {
            self.err(
                o.pos("key_file"),
                &P::Key(path, "key_file"),
                "expected the path of the file holding the shared key",
            );
            return None;
        }
        Some(StateSync {
            peers,
            port,
            key_file: PathBuf::from(key_file),
        })
    }
}
