//! The `xdp` group: the datapath's cost per packet by BPF_PROG_TEST_RUN (the method is
//! in `bench.rs`'s header), beside the floor programs, round by round. With `--baseline
//! OBJECT` (`cargo xtask bench --baseline REV` builds one) another build of the XDP
//! object is measured too, in the same rounds and the same process, its figures named
//! `baseline.xdp.*`: builds compared from two bench binaries differ by up to about 10 ns
//! with the same datapath (the measuring process's own code and data sit elsewhere).

use std::time::Instant;

use aya::{programs::Xdp, Ebpf};
use bascule::{datapath::Datapath, plan::Plan};

use crate::{
    common::{harness::Harness, packet::Frame},
    figure::{Figure, Settings},
    measure, CONFIG, FLOOR_OBJECT,
};

/// The benchmark datapath's connection-table capacity (the `nat` reply table's too): its
/// entries (4 MB of sets, as much again for `nat` replies) do not fit in a core's caches, and
/// it fills in about a second for the full-table figures. Small in `--quick` mode.
fn conntrack_entries(quick: bool) -> u32 {
    if quick {
        4096
    } else {
        65_536
    }
}

/// The connection-table capacity of the "new_1m" figures: the default one (a million
/// entries) but in `--quick` mode, which only checks that the figures come out.
fn big_conntrack_entries(quick: bool) -> u32 {
    if quick {
        65_536
    } else {
        lb_common::CONNTRACK_DEFAULT_ENTRIES
    }
}

/// Fills `datapath`'s connection table as a SYN flood would leave it: single-packet
/// entries (active, neither established nor a peer's) seen now, of distinct 5-tuples to
/// a `service` VIP. Written from userspace with the datapath's write protocol, three
/// times the capacity (flows fill sets unevenly; this leaves well under 1% of the sets
/// with room): about a second for a million entries, where running the SYNs through the
/// program would take a minute.
fn fill_like_a_flood(datapath: &mut Datapath, service: u32, backend: u32) {
    let capacity = datapath.conntrack_capacity().expect("the table's capacity");
    let now = bascule::datapath::monotonic_ns();
    for n in 0..capacity * 3 {
        let n = n as u32;
        let key = lb_common::FlowKey {
            // 10.200.0.0/16 and on (network order), ports 1024 and on.
            src: [(0x0ac8_0000u32 + (n >> 8)).to_be(), 0, 0, 0],
            dst: [0x0a70_0064u32.to_be(), 0, 0, 0],
            sport: (1024 + (n & 0xff) as u16).to_be(),
            dport: 80u16.to_be(),
            proto: lb_common::IPPROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let state = lb_common::FlowState {
            backend,
            service,
            last_seen: now,
            flags: lb_common::FLOW_ACTIVE,
            seq: 0,
        };
        datapath
            .insert_synced(lb_common::FlowEntry { key, state }, None)
            .expect("write an entry");
    }
}

/// Keeps the calling thread on the CPU it runs on until dropped (the previous CPU set is
/// restored then). Every XDP figure is then taken on the same CPU, with the same per-CPU
/// state (counters) and caches.
struct Pinned(Option<libc::cpu_set_t>);

impl Pinned {
    fn here() -> Pinned {
        // SAFETY: plain libc calls on this thread, with a zeroed cpu_set_t of the right size.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let cpu = libc::sched_getcpu();
            if cpu < 0 || libc::sched_getaffinity(0, size, &mut before) != 0 {
                return Pinned(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return Pinned(None);
            }
            Pinned(Some(before))
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            // SAFETY: restores the set read in `here`.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), before) };
        }
    }
}

/// A TCP SYN from the `n`-th client of a range (`range` 0, 1, ... keep ranges apart) to
/// `vip`:80: a distinct 5-tuple for every `n` below 2^24.
fn client_syn(fam: &str, range: u32, n: u32, vip: &str) -> Vec<u8> {
    let src = if fam == "v4" {
        format!(
            "10.{}.{}.{}",
            120 + range * 32 + (n >> 16) % 32,
            (n >> 8) & 0xff,
            n & 0xff
        )
    } else {
        format!("fd00:{:x}::{:x}:{:x}", 0x120 + range, n >> 16, n & 0xffff)
    };
    Frame::tcp(&src, 1024 + (n >> 21) as u16, vip, 80).bytes()
}

/// The cases: forwarding mode, family, VIP, verdict.
const CASES: [(&str, &str, &str, u32); 6] = [
    ("dr", "v4", "10.112.0.100", 3),
    ("dr", "v6", "fd00:112::100", 3),
    ("tun", "v4", "10.112.0.101", 3),
    ("tun", "v6", "fd00:112::101", 3),
    ("nat", "v4", "10.112.0.102", 3),
    ("nat", "v6", "fd00:112::102", 3),
];

/// A build of the datapath (`object`, None: this one) and its figures. Each round loads
/// it afresh, twice: with a connection table of the bench's size, and with the default
/// size filled like a flood (`new_1m`, `dr` and `tun` cases only). Two loads of the same
/// object differ by up to about 15 ns per new flow, for as long as they are loaded
/// (where the kernel placed the program and its maps): a figure over several loads is
/// one of the build, not of a placement.
struct Subject {
    object: Option<Aligned>,
    prefix: &'static str,
    per_case: Vec<[Figure; 3]>,
    per_big: Vec<Figure>,
    /// `xdp.dr.v4.new_synced` (this build only): the plan with `sync:` configured, and
    /// the figure.
    synced: Option<(Plan, Figure)>,
}

impl Subject {
    fn new(object: Option<Aligned>, prefix: &'static str, synced: Option<Plan>) -> Subject {
        let figure = |name: String| {
            let mut fig = Figure::new(&format!("{prefix}{name}"), "ns");
            fig.baseline = Some("xdp.floor.swapmac".into());
            fig
        };
        Subject {
            object,
            prefix,
            per_case: CASES
                .iter()
                .map(|(m, f, _, _)| {
                    ["established", "new", "new_full"]
                        .map(|path| figure(format!("xdp.{m}.{f}.{path}")))
                })
                .collect(),
            per_big: CASES[..4]
                .iter()
                .map(|(m, f, _, _)| figure(format!("xdp.{m}.{f}.new_1m")))
                .collect(),
            synced: synced.map(|plan| {
                let mut fig = Figure::new(&format!("{prefix}xdp.dr.v4.new_synced"), "ns");
                fig.baseline = Some(format!("{prefix}xdp.dr.v4.new"));
                (plan, fig)
            }),
        }
    }

    /// The build loaded with a table of `entries`, programmed with `h`'s plan.
    fn load(&self, h: &Harness, entries: u32) -> Datapath {
        let mut d = match &self.object {
            Some(o) => Datapath::load_object(o.bytes(), entries),
            None => Datapath::load(entries),
        }
        .expect("load the XDP program");
        d.apply(&h.plan).expect("program the maps");
        d
    }

    /// One round of every case (`round` keeps the new flows' 5-tuples unique), with
    /// `fillers` to fill the small table (see `figures`).
    fn round(&mut self, h: &Harness, s: &Settings, round: usize, fillers: &[Vec<Vec<u8>>]) {
        let ifindex = h.ifindex;
        let mut small = self.load(h, conntrack_entries(s.quick));
        for (((_, fam, vip, verdict), [est, new, full]), filler) in
            CASES.iter().zip(self.per_case.iter_mut()).zip(fillers)
        {
            // Every case starts from empty tables, whatever the cases before it left.
            small.clear_conntrack().expect("clear the connection table");
            small.clear_nat_replies().expect("clear the nat table");
            let prog = small.program();
            let client = if *fam == "v4" {
                "10.111.0.10"
            } else {
                "fd00:111::10"
            };
            let established = Frame::tcp(client, 999, vip, 80).bytes();
            // Creates the connection-table entry.
            measure(prog, ifindex, &mut |_| established.clone(), 1, *verdict);
            est.samples.push(measure(
                prog,
                ifindex,
                &mut |_| established.clone(),
                s.runs,
                *verdict,
            ));
            // New flows while the table has room: distinct 5-tuples, unique per round.
            let first = round as u32 * s.runs;
            new.samples.push(measure(
                prog,
                ifindex,
                &mut |i| client_syn(fam, 0, first + i, vip),
                s.runs,
                *verdict,
            ));
            // New flows into a full table (a busy node's steady state): each insert
            // evicts the least recently seen entry of its set.
            let n = filler.len() as u32;
            measure(
                prog,
                ifindex,
                &mut |i| filler[i as usize].clone(),
                n,
                *verdict,
            );
            full.samples.push(measure(
                prog,
                ifindex,
                &mut |i| client_syn(fam, 1, first + i, vip),
                s.runs,
                *verdict,
            ));
        }
        if let Some((plan, fig)) = &mut self.synced {
            // The same new flows with `sync:` configured, each reported to the ring,
            // which a reader drains as the daemon's sender does.
            small.apply(plan).expect("program the maps with sync:");
            small.clear_conntrack().expect("clear the connection table");
            let mut ring = small.take_sync_ring().expect("the sync ring");
            // Twice: the first pass writes the ring's memory once, as a running node's
            // has been (a fresh ring's first writes cost about 30 ns more a report).
            for pass in 0..2 {
                let first = (round as u32 * 2 + pass) * s.runs;
                let ns = measure(
                    small.program(),
                    ifindex,
                    &mut |i| {
                        if i % 1024 == 0 {
                            while ring.next().is_some() {}
                        }
                        client_syn("v4", 3, first + i, "10.112.0.100")
                    },
                    s.runs,
                    3,
                );
                if pass == 1 {
                    fig.samples.push(ns);
                }
                small.clear_conntrack().expect("clear the connection table");
            }
            while ring.next().is_some() {}
            let dropped = small.sync_drops().expect("the sync drop counter");
            assert_eq!(dropped, 0, "reports dropped while the ring was drained");
        }
        let mut big = self.load(h, big_conntrack_entries(s.quick));
        let dr4 = h
            .plan
            .services
            .iter()
            .find(|p| p.name == "dr4")
            .expect("service dr4");
        let filled = Instant::now();
        fill_like_a_flood(&mut big, dr4.info.id, dr4.backends[0]);
        if round == 0 {
            println!(
                "{}new_1m: {} of {} entries in use, filled in {:.1} s",
                self.prefix,
                big.conntrack_len().expect("the table's entries"),
                big.conntrack_capacity().expect("the table's capacity"),
                filled.elapsed().as_secs_f64()
            );
        }
        for ((_, fam, vip, verdict), fig) in CASES.iter().zip(self.per_big.iter_mut()) {
            let first = round as u32 * s.runs;
            fig.samples.push(measure(
                big.program(),
                ifindex,
                &mut |i| client_syn(fam, 4, first + i, vip),
                s.runs,
                *verdict,
            ));
        }
    }
}

pub fn figures(s: &Settings, figures: &mut Vec<Figure>) {
    let entries = conntrack_entries(s.quick);
    let mut h = Harness::with_conntrack(CONFIG, entries);
    let ifindex = h.ifindex;
    let mut floor = Ebpf::load(FLOOR_OBJECT).expect("load the floor programs");
    for name in ["floor_drop", "floor_swapmac"] {
        let p: &mut Xdp = floor.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("load floor program");
    }
    let mut fig_drop = Figure::new("xdp.floor.drop", "ns");
    let mut fig_swap = Figure::new("xdp.floor.swapmac", "ns");
    // Enough SYNs to fill the tables, from a client range of their own: three times their
    // capacity, because flows fill the sets of seven unevenly (this leaves under 1% of the
    // sets with room).
    let fill = entries * 3;
    let fillers: Vec<Vec<Vec<u8>>> = CASES
        .iter()
        .map(|(_, fam, vip, _)| (0..fill).map(|n| client_syn(fam, 2, n, vip)).collect())
        .collect();
    let base = Frame::tcp("10.111.0.10", 1000, "10.112.0.100", 80).bytes();
    // `xdp.dr.v4.new_synced`'s plan: the same services with `sync:` configured.
    h.apply(&format!(
        "{CONFIG}sync:\n  peers: [10.0.0.3]\n  key_file: /etc/k\n"
    ));
    let synced = h.plan.clone();
    h.apply(CONFIG);
    let mut subjects = vec![Subject::new(None, "", Some(synced))];
    if let Some(path) = &s.baseline {
        subjects.push(Subject::new(Some(read_aligned(path)), "baseline.", None));
    }
    let _pinned = Pinned::here();
    for round in 0..s.rounds {
        {
            let p: &mut Xdp = floor.program_mut("floor_drop").unwrap().try_into().unwrap();
            fig_drop
                .samples
                .push(measure(p, ifindex, &mut |_| base.clone(), s.runs, 1));
        }
        {
            let p: &mut Xdp = floor
                .program_mut("floor_swapmac")
                .unwrap()
                .try_into()
                .unwrap();
            fig_swap
                .samples
                .push(measure(p, ifindex, &mut |_| base.clone(), s.runs, 3));
        }
        // This build and the baseline in turns, each going first every other round.
        let n = subjects.len();
        for i in 0..n {
            let at = if round % 2 == 0 { i } else { n - 1 - i };
            subjects[at].round(&h, s, round, &fillers);
        }
    }
    figures.push(fig_drop);
    figures.push(fig_swap);
    for subject in subjects {
        figures.extend(subject.per_case.into_iter().flatten());
        figures.extend(subject.per_big);
        figures.extend(subject.synced.map(|(_, fig)| fig));
    }
}

/// An ELF object's bytes, 8-byte aligned as the loader's parser wants them.
struct Aligned(Vec<u64>, usize);

impl Aligned {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `self.1` bytes of the `u64`s' own memory, which outlives the slice.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.1) }
    }
}

/// The XDP object at `path` (`--baseline`).
fn read_aligned(path: &std::path::Path) -> Aligned {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("--baseline {}: {e}", path.display()));
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_ne_bytes(b);
    }
    Aligned(words, bytes.len())
}
