//! Loading the embedded XDP object: plain (maps owned by this process) or pinned (maps
//! reused from, or pinned to, the pin tree), and whether pinned maps fit this build.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, MapInfo},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{flow_sets, FlowTable, LocalMacs};

use super::{
    flows,
    pins::{PinDir, SavedState},
    Datapath, PinPaths, XDP_OBJECT, XDP_PROGRAM,
};

/// The maps of the XDP object that userspace shares with the kernel (the object's
/// `.rodata`/`.bss` sections are per program and not pinned).
fn object_maps() -> Result<Vec<(String, aya_obj::Map)>> {
    maps_of(XDP_OBJECT).context("cannot parse the embedded XDP object")
}

/// `object_maps` of any build of the XDP object, sorted by name.
fn maps_of(object: &[u8]) -> Result<Vec<(String, aya_obj::Map)>> {
    let obj = aya_obj::Object::parse(object)?;
    let mut maps: Vec<(String, aya_obj::Map)> = obj
        .maps
        .into_iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// The connection table's capacity for a configured `conntrack.max_entries`.
fn conntrack_capacity(configured: u32) -> u32 {
    configured.max(1024)
}

/// The entries of the maps sized by `conntrack.max_entries`: the connection table and
/// the `nat` reply table (a `nat` flow has one entry in each), in sets of `FLOW_WAYS`.
fn flow_table_entries(name: &str, conntrack_entries: u32) -> Option<u32> {
    let capacity = conntrack_capacity(conntrack_entries);
    match name {
        "CONNTRACK" | "NAT" => Some(flow_sets(capacity)),
        _ => None,
    }
}

/// The set-associative tables, by their `FLOW_TABLE` slot.
pub(super) const SET_TABLES: [&str; 2] = ["CONNTRACK", "NAT"];

/// A loader with the flow tables sized for `conntrack.max_entries`.
fn loader(conntrack_entries: u32) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in SET_TABLES {
        loader.map_max_entries(name, flow_table_entries(name, conntrack_entries).unwrap());
    }
    loader
}

/// A digest of the embedded XDP object, saved in the state file: pinned state written by
/// another build is not adopted (see [`adoption`]).
pub fn object_digest() -> u64 {
    lb_common::maglev::stable_hash(XDP_OBJECT)
}

impl Datapath {
    /// Loads the program and creates its maps (not attached yet).
    pub fn load(conntrack_entries: u32) -> Result<Self> {
        Datapath::load_object(XDP_OBJECT, conntrack_entries)
    }

    /// `load` with another build of the XDP object (`cargo xtask bench --baseline`
    /// measures one beside this build's), whose maps must be this build's.
    pub fn load_object(object: &[u8], conntrack_entries: u32) -> Result<Self> {
        if object != XDP_OBJECT {
            // Each map as "NAME type T, key/value sizes K/V", sorted by name.
            let shape = |maps: Vec<(String, aya_obj::Map)>| -> Vec<String> {
                maps.iter()
                    .map(|(n, m)| {
                        let (t, k, v) = (m.map_type(), m.key_size(), m.value_size());
                        format!("{n} type {t}, key/value sizes {k}/{v}")
                    })
                    .collect()
            };
            let theirs = shape(maps_of(object).context("cannot parse the XDP object")?);
            let ours = shape(object_maps()?);
            if theirs != ours {
                let only = |a: &[String], b: &[String]| {
                    let rest: Vec<&str> = a
                        .iter()
                        .filter(|m| !b.contains(m))
                        .map(String::as_str)
                        .collect();
                    rest.join("; ")
                };
                bail!(
                    "the XDP object's maps are not this build's, so this build cannot program them \
                     (only in it: [{}]; only in this build: [{}]): measure against a revision \
                     with the same maps, such as the commit before a change to the datapath's code",
                    only(&theirs, &ours),
                    only(&ours, &theirs)
                );
            }
        }
        let mut ebpf = loader(conntrack_entries).load(object).context(
            "cannot load the XDP object (is this root, with CAP_BPF and CAP_NET_ADMIN?)",
        )?;
        load_program(&mut ebpf)?;
        let mut datapath = Datapath {
            ebpf,
            links: Vec::new(),
            applied: None,
            pins: None,
            synced: None,
        };
        datapath.init_maps()?;
        Ok(datapath)
    }

    /// Loads the program with every map pinned in `pins`: maps already pinned there are
    /// reused as they are (contents included: the connection table survives), missing ones
    /// are created and pinned. Links made by [`Datapath::attach`] are pinned too, and links
    /// already pinned are taken over. Check [`pinned_maps_mismatch`] first.
    pub fn load_pinned(conntrack_entries: u32, pins: &PinDir) -> Result<Self> {
        let maps = object_maps()?;
        let mut loader = loader(conntrack_entries);
        for (name, _) in &maps {
            loader.map_pin_path(name, pins.maps().join(name));
        }
        let mut ebpf = loader.load(XDP_OBJECT).with_context(|| {
            format!(
                "cannot load the XDP object with its maps pinned in {} (is this root, with CAP_BPF and CAP_NET_ADMIN?)",
                pins.maps().display()
            )
        })?;
        load_program(&mut ebpf)?;
        let mut datapath = Datapath {
            ebpf,
            links: Vec::new(),
            applied: None,
            pins: Some(PinPaths {
                links: pins.links(),
            }),
            synced: None,
        };
        // An adopted table keeps its seed: its flows stay where they are.
        datapath.init_maps()?;
        let pin = pins.programs().join(XDP_PROGRAM);
        let _ = std::fs::remove_file(&pin);
        datapath
            .program()
            .pin(&pin)
            .with_context(|| format!("cannot pin the XDP program at {}", pin.display()))?;
        Ok(datapath)
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .expect("loaded in Datapath::load")
            .try_into()
            .expect("XDP program")
    }

    /// What every load sets up, maps adopted or new: the flow tables' shape and the clock
    /// (`init_flow_table`), and no MACs recorded (attaching records them again).
    pub(super) fn init_maps(&mut self) -> Result<()> {
        self.init_flow_table()?;
        let mut m: Array<_, LocalMacs> = Array::try_from(self.map("LOCAL_MACS")?)?;
        m.set(0, LocalMacs::default(), 0)?;
        Ok(())
    }

    /// Gives each new set-associative table (its `FLOW_TABLE` slot all zero: no shape) its
    /// number of sets and a random seed, and keeps those of one adopted from a previous
    /// daemon; calibrates the datapath's clock again either way.
    fn init_flow_table(&mut self) -> Result<()> {
        let clock = match self.calibrate_clock() {
            Ok(clock) => Some(clock),
            Err(e) => {
                tracing::warn!(
                    "cannot calibrate the datapath's clock ({e:#}): it reads the kernel's coarse clock by a helper call instead, a few ns more per packet"
                );
                None
            }
        };
        for (slot, name) in SET_TABLES.iter().enumerate() {
            let sets = self.map_entries(name)?;
            let mut m: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
            let mut table = m.get(&(slot as u32), 0)?;
            if table.sets != u64::from(sets) {
                table = FlowTable {
                    sets: u64::from(sets),
                    seed: flows::random_seed(),
                    ..FlowTable::default()
                };
            }
            (table.tick_ns, table.clock_offset) = clock.unwrap_or_default();
            m.set(slot as u32, table, 0)?;
        }
        Ok(())
    }

    /// A set-associative table's number of sets (its capacity, set at load time).
    pub(super) fn map_entries(&mut self, name: &str) -> Result<u32> {
        match self.map(name)? {
            aya::maps::Map::Array(data) => Ok(data.info()?.max_entries()),
            _ => Err(anyhow!("map {name} is not an array")),
        }
    }
}

/// Whether the maps pinned in `pins` can be adopted by this build: every map of the
/// object that is pinned has the same type, key and value sizes, capacity and flags.
/// Returns the differences (empty: compatible, or nothing pinned).
pub fn pinned_maps_mismatch(conntrack_entries: u32, pins: &PinDir) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, def) in object_maps()? {
        let path = pins.maps().join(&name);
        if !path.exists() {
            continue;
        }
        let info = match MapInfo::from_pin(&path) {
            Ok(i) => i,
            Err(e) => {
                out.push(format!("{name}: cannot open the pinned map: {e}"));
                continue;
            }
        };
        let max_entries =
            flow_table_entries(&name, conntrack_entries).unwrap_or_else(|| def.max_entries());
        let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let want = (
            def.map_type(),
            def.key_size(),
            def.value_size(),
            max_entries,
            def.map_flags(),
        );
        let have = (
            pinned_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        if want != have {
            out.push(format!(
                "{name}: pinned (type, key, value, entries, flags) {have:?}, this build needs {want:?}"
            ));
        }
    }
    Ok(out)
}

/// Whether the state pinned in `pins` can be adopted by this build: `None` when nothing
/// is pinned, the saved state when it was written in this very network namespace, by
/// this very build (the XDP object's digest), for the same connection-table size, and
/// every pinned map has the layout this build expects; otherwise why not (the daemon
/// then starts over).
pub fn adoption(
    pins: &PinDir,
    conntrack_entries: u32,
) -> Result<Option<std::result::Result<SavedState, String>>> {
    if !pins.has_pins() {
        return Ok(None);
    }
    let why = match pins.read_state() {
        None => "no readable state file".to_string(),
        Some(s) if s.netns_cookie != pins.netns_cookie() => {
            "it was left by a network namespace that no longer exists".to_string()
        }
        // Another build may give a field another meaning at the same size: its maps
        // would pass the layout check below and be misread.
        Some(s) if s.object_digest != object_digest() => format!(
            "it was left by another build: object digest {:016x}, this build's is {:016x}",
            s.object_digest,
            object_digest()
        ),
        Some(s) if s.conntrack_entries != conntrack_entries => format!(
            "conntrack.max_entries changed from {} to {conntrack_entries}",
            s.conntrack_entries
        ),
        Some(s) => {
            let mismatch = pinned_maps_mismatch(conntrack_entries, pins)?;
            if mismatch.is_empty() {
                return Ok(Some(Ok(s)));
            }
            format!("its maps differ from this build's: {}", mismatch.join("; "))
        }
    };
    Ok(Some(Err(why)))
}

fn load_program(ebpf: &mut Ebpf) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
        .try_into()?;
    prog.load().context("the kernel refused the XDP program")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Datapath, DECAP_OBJECT};

    /// `--baseline`'s object is checked before anything is loaded: an object with other
    /// maps (the decapsulation program's) is refused, the maps named.
    #[test]
    fn an_object_with_other_maps_is_refused_before_loading() {
        let err = Datapath::load_object(DECAP_OBJECT, 1024)
            .err()
            .expect("refused");
        let text = format!("{err:#}");
        assert!(text.contains("are not this build's"), "{text}");
        assert!(text.contains("CONNTRACK"), "{text}");
    }
}
