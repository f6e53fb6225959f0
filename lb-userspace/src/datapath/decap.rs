//! `bascule decap`: the backend side of `tun` forwarding. Loads the tc ingress program
//! that strips bascule's IP-in-IP / IPv6-in-IPv6 / IPv4-in-IPv6 headers for the VIPs
//! this host serves.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::HashMap,
    programs::{tc, SchedClassifier, TcAttachType},
    Ebpf,
};
use lb_common::{addr_words, DecapVip};

use super::DECAP_OBJECT;

pub struct Decap {
    ebpf: Ebpf,
    link: Option<aya::programs::tc::SchedClassifierLinkId>,
    pub interface: String,
}

pub fn decap_key(vip: IpAddr) -> DecapVip {
    let (addr, family) = addr_words(vip);
    DecapVip {
        addr,
        family,
        _pad: [0; 3],
    }
}

impl Decap {
    /// Loads the program, fills its VIP set and attaches it to `interface`'s ingress.
    pub fn attach(interface: &str, vips: &[IpAddr]) -> Result<Self> {
        if vips.is_empty() {
            bail!("no VIP to decapsulate: hold the VIPs on lo, or pass --vip ADDR");
        }
        let mut ebpf = Ebpf::load(DECAP_OBJECT)
            .context("cannot load the decap object (root with CAP_BPF?)")?;
        {
            let mut set: HashMap<_, DecapVip, u8> = HashMap::try_from(
                ebpf.map_mut("DECAP_VIPS")
                    .ok_or_else(|| anyhow!("DECAP_VIPS missing"))?,
            )?;
            for &vip in vips {
                set.insert(decap_key(vip), 1, 0)?;
            }
        }
        // EEXIST: the interface already has a clsact qdisc, which is fine.
        let _ = tc::qdisc_add_clsact(interface);
        let prog: &mut SchedClassifier = ebpf
            .program_mut("bascule_decap")
            .ok_or_else(|| anyhow!("program bascule_decap missing"))?
            .try_into()?;
        prog.load()
            .context("the kernel refused the decap program")?;
        let link = prog
            .attach(interface, TcAttachType::Ingress)
            .with_context(|| format!("cannot attach the decap program to {interface} ingress"))?;
        Ok(Decap {
            ebpf,
            link: Some(link),
            interface: interface.to_string(),
        })
    }

    /// Packets decapsulated so far.
    pub fn decapsulated(&self) -> Result<u64> {
        let m: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
            self.ebpf
                .map("DECAP_STATS")
                .ok_or_else(|| anyhow!("DECAP_STATS missing"))?,
        )?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            if let Some(p) = self.ebpf.program_mut("bascule_decap") {
                let p: Result<&mut SchedClassifier, _> = p.try_into();
                if let Ok(p) = p {
                    let _ = p.detach(link);
                }
            }
        }
    }
}
