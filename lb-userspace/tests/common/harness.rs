//! The fixture harness: the real XDP object loaded in a throwaway namespace whose `eth0`
//! has the fixture lab's addresses and static neighbours, maps programmed from a config
//! exactly as `bascule run` does (config -> plan -> maps), frames run through
//! BPF_PROG_TEST_RUN, and table-driven cases whose mismatches name the differing fields.

use std::net::IpAddr;

use super::{
    packet::{self, Frame, CLIENT_MAC},
    Netns,
};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use bascule::{
    config::Config,
    control::{prepare_interfaces, tunnel_sources},
    datapath::Datapath,
    plan::{self, MacTable, Plan},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// MAC of a lab backend: 02:00:00:00:00:<last address byte>.
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let last = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [0x02, 0, 0, 0, 0, last]
}

pub struct Harness {
    pub ns: Netns,
    pub datapath: Datapath,
    pub plan: Plan,
    pub config: Config,
    pub ifindex: u32,
}

impl Harness {
    pub fn new(config_text: &str) -> Harness {
        Harness::with_conntrack(config_text, 65536)
    }

    /// Like `new`, with a connection table of `entries`.
    pub fn with_conntrack(config_text: &str, entries: u32) -> Harness {
        let config = Config::parse(config_text, "fixtures.yaml").expect("fixture config");
        let ns = Netns::new("fx");
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ns.ip(&["link", "set", "eth0", "address", "02:00:00:00:00:02", "up"]);
        ns.ip(&["link", "set", "peer0", "up"]);
        ns.ip(&["addr", "add", "10.111.0.2/24", "dev", "eth0"]);
        ns.ip(&["addr", "add", "fd00:111::2/64", "dev", "eth0", "nodad"]);
        // A permanent neighbour entry on eth0.
        let neighbour = |addr: &str, mac: [u8; 6]| {
            let mac = mac
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            ns.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        };
        let mut macs = MacTable::new();
        for svc in &config.services {
            for b in &svc.backends {
                let mac = backend_mac(b.address);
                neighbour(&b.address.to_string(), mac);
                macs.insert(b.address, mac);
            }
        }
        // The client, for routed (`nat`) replies.
        neighbour("10.111.0.10", CLIENT_MAC);
        neighbour("fd00:111::10", CLIENT_MAC);
        ns.enter();
        let ifindex = ns.ifindex("eth0");
        prepare_interfaces(&config).expect("forwarding sysctls");
        let mut datapath = Datapath::load(entries).expect("load the XDP program");
        let tunnel = tunnel_sources(&config).expect("tunnel sources from eth0");
        let plan = plan::plan(&config, &macs, tunnel, None).expect("plan");
        datapath.apply(&plan).expect("program the maps");
        Harness {
            ns,
            datapath,
            plan,
            config,
            ifindex,
        }
    }

    /// Runs one frame through the program; returns the verdict and the output frame.
    pub fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        run_on(self.datapath.program(), self.ifindex, input)
    }

    /// The id of the service named `name` in the plan.
    pub fn service_id(&self, name: &str) -> u32 {
        self.plan
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in the plan"))
            .info
            .id
    }

    /// The backend the plan says this frame's flow goes to (as `bascule simulate` will).
    pub fn predicted(&self, f: &Frame) -> IpAddr {
        let (_, id) = plan::predict(&self.plan, &f.flow_key()).expect("flow maps to a backend");
        self.plan
            .backends
            .iter()
            .find(|b| b.id == id)
            .unwrap()
            .address
    }

    pub fn apply(&mut self, config_text: &str) {
        self.config = Config::parse(config_text, "fixtures.yaml").unwrap();
        let macs: MacTable = self
            .config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (b.address, backend_mac(b.address)))
            })
            .collect();
        let tunnel = tunnel_sources(&self.config).unwrap();
        self.plan = plan::plan(&self.config, &macs, tunnel, Some(&self.plan)).unwrap();
        self.datapath.apply(&self.plan).unwrap();
    }
}

/// Runs one frame through `prog` as received on `ifindex` (threads share one program).
pub fn run_on(prog: &Xdp, ifindex: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let ctx = xdp_md(input.len() as u32, ifindex);
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

pub fn xdp_md(len: u32, ifindex: u32) -> Vec<u8> {
    [0u32, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

pub enum Expect {
    Unchanged,
    Frame(Vec<u8>),
}

pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub expect: Expect,
}

pub fn check(h: &mut Harness, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let (verdict, out) = h.run(&c.input);
        let expected = match &c.expect {
            Expect::Unchanged => c.input.clone(),
            Expect::Frame(f) => f.clone(),
        };
        let mut problems = Vec::new();
        if verdict != c.verdict {
            problems.push(format!("verdict: expected {}, got {}", c.verdict, verdict));
        }
        problems.extend(packet::diff(&expected, &out));
        if !problems.is_empty() {
            failures.push(format!(
                "case '{}':\n    {}",
                c.name,
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
