//! The lookup-table maps: a service's table written into an mmap-able array map, one
//! aligned 8-byte store per cell (two slots per cell), so that a packet reads each cell old
//! or new. New maps are made and filled on every core when they are many.

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, MapData};
use lb_common::{MAGLEV_TABLE_SIZE, TABLE_CELLS, TABLE_MAP_FLAGS};

use crate::plan::{PlannedService, Table};

/// A new lookup-table map holding `slots` (two per cell, see `lb_common::TABLE_CELLS`; the
/// rest 0), filled through a shared mapping of the map's memory: one copy, not one `bpf()`
/// call per cell (1,000 tables would take tens of seconds otherwise).
/// The new table maps of `services`, in order; on every core when they are many (a load
/// fills 1,000 maps of 256 KiB: the kernel's page allocation is most of it).
pub(super) fn table_maps(services: &[&PlannedService]) -> Result<Vec<(u32, Array<MapData, u64>)>> {
    let one = |svc: &&PlannedService| {
        table_map(&svc.table)
            .with_context(|| format!("service {}: Maglev table", svc.name))
            .map(|t| (svc.info.id, t))
    };
    crate::util::cores::map(services, 16, one)
        .into_iter()
        .collect()
}

fn table_map(slots: &Table) -> Result<Array<MapData, u64>> {
    if slots.len() > MAGLEV_TABLE_SIZE as usize {
        return Err(anyhow!(
            "{} slots, a table holds at most {MAGLEV_TABLE_SIZE}",
            slots.len()
        ));
    }
    let table: Array<MapData, u64> =
        Array::create(TABLE_CELLS, TABLE_MAP_FLAGS).context("cannot create a table map")?;
    let fd = {
        use aya::maps::IterableMap as _;
        use std::os::fd::{AsFd, AsRawFd};
        table.map().fd().as_fd().as_raw_fd()
    };
    write_cells(fd, slots)?;
    Ok(table)
}

/// Writes `slots` into the table map `fd` (two per 8-byte cell, even slot in the low half)
/// through a shared mapping of its memory, each cell with one aligned 8-byte store (a
/// packet reading the map meanwhile sees each cell whole, old or new).
pub(super) fn write_cells(fd: i32, slots: &Table) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let len = TABLE_CELLS as usize * std::mem::size_of::<u64>();
    // SAFETY: maps the `len` bytes of the array's values (an mmap-able array map exposes
    // its 8-byte value cells from offset 0, page-aligned); the mapping is private to this
    // function and unmapped before it returns; `fd` outlives it. The cells are written as
    // atomics because BPF programs read them concurrently.
    unsafe {
        let mem = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            // Populated at once: one call instead of a page fault per 4 KiB written.
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        );
        if mem == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("cannot map a table map");
        }
        let cells = mem.cast::<u64>();
        for (i, pair) in slots
            .indexes()
            .chunks(2)
            .take(TABLE_CELLS as usize)
            .enumerate()
        {
            let high = pair.get(1).map_or(0, |&index| slots.id(index));
            AtomicU64::from_ptr(cells.add(i)).store(
                u64::from(slots.id(pair[0])) | u64::from(high) << 32,
                Ordering::Relaxed,
            );
        }
        libc::munmap(mem, len);
    }
    Ok(())
}
