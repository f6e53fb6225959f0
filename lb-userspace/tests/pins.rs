//! Pinned state is adopted only when it provably fits this build: pins left by another
//! build (another object digest in the state file) are refused, with both digests named;
//! the same build's are adopted. Privileged: loads the XDP object with its maps pinned, in
//! a network namespace of its own.

mod common;

use bascule::datapath::{
    self,
    pins::{PinDir, SavedState},
    Datapath,
};

const ENTRIES: u32 = 4096;

#[test]
fn pins_of_another_build_are_not_adopted_and_the_same_builds_are() {
    std::thread::spawn(|| {
        common::enter_private_netns().unwrap();
        let pins = PinDir::open().unwrap();
        // A daemon of some build pinned its maps here and went away.
        drop(Datapath::load_pinned(ENTRIES, &pins).unwrap());
        let ours = datapath::object_digest();
        let other = ours ^ 0x5a5a_0000_0000_0001;
        let cookie = pins.netns_cookie();
        let state = |object_digest| SavedState {
            netns_cookie: cookie,
            object_digest,
            conntrack_entries: ENTRIES,
            ..Default::default()
        };

        pins.write_state(&state(other)).unwrap();
        let refused = datapath::adoption(&pins, ENTRIES).unwrap();
        let result = match refused {
            Some(Err(why)) => Ok(why),
            other => Err(format!("{other:?}")),
        };
        pins.write_state(&state(ours)).unwrap();
        let adopted = datapath::adoption(&pins, ENTRIES).unwrap();
        pins.remove().unwrap();

        let why = result.expect("pins of another build must not be adopted");
        for digest in [ours, other] {
            assert!(
                why.contains(&format!("{digest:016x}")),
                "the reason names both digests ({ours:016x}, {other:016x}): {why}"
            );
        }
        assert_eq!(adopted, Some(Ok(state(ours))), "the same build adopts");
    })
    .join()
    .unwrap();
}
