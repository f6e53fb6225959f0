//! The bpf(2) calls aya does not make: batched lookups and updates (one call for a whole
//! map instead of one per entry), an inner map's id and a file descriptor from it.

/// The id of the map in slot `index` of the map of maps `outer_fd` (a lookup from
/// userspace answers the inner map's id), None for an empty slot.
pub(super) fn inner_map_id(outer_fd: i32, index: u32) -> std::io::Result<Option<u32>> {
    /// The element-operation member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut id = 0u32;
    let mut attr = ElemAttr {
        map_fd: outer_fd as u32,
        _pad: 0,
        key: &index as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at `index` and `id`, which outlive the call.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file descriptor of the map with kernel id `id` (BPF_MAP_GET_FD_BY_ID).
pub(super) fn map_fd_by_id(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    #[repr(C)]
    struct GetIdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    let mut attr = GetIdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a plain attr struct; on success the kernel returns a new fd we own.
    let fd = unsafe { bpf(BPF_MAP_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: `fd` was just returned to us by the kernel and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A batch operation this kernel or map type does not do (the caller falls back to one
/// update per entry, which reports a real error if there is one).
pub(super) fn batch_refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)
    )
}

/// The bpf(2) system call: `cmd` with `attr` (the member of `union bpf_attr` that `cmd`
/// reads; the kernel zero-extends the rest). Returns the call's non-negative result.
///
/// # Safety
/// Pointers inside `attr` must be valid for what `cmd` reads and writes through them.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<i64> {
    let rc = libc::syscall(
        libc::SYS_bpf,
        cmd,
        attr as *mut A,
        std::mem::size_of::<A>() as u32,
    );
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The `batch` member of `union bpf_attr` (BPF_MAP_*_BATCH).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// BPF_MAP_LOOKUP_BATCH from the array map `map_fd`'s first entry: `keys.len()` entries
/// into `keys` and `values` (`values` laid out as the kernel copies them: for a per-CPU
/// map, one 8-byte-aligned value per possible CPU for each key). Returns how many were
/// read (fewer when the map ends first).
pub(super) fn lookup_batch<V: Copy>(
    map_fd: i32,
    keys: &mut [u32],
    values: &mut [V],
) -> std::io::Result<usize> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut next = 0u32;
    let mut attr = BatchAttr {
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map_fd as u32,
        ..Default::default()
    };
    // SAFETY: `attr` points at `next`, `keys` and `values`, which outlive the call and
    // hold what the kernel writes (the caller sized `values` for the map's values).
    match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => Ok(attr.count as usize),
        // The map ended before `count` entries: `count` says how many were read.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(attr.count as usize),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_UPDATE_BATCH: `keys[i]` -> `values[i]` in the map `map_fd`, in one call.
/// `values` are laid out as the map's values (`V` is the map's value type).
pub(super) fn update_batch<V: Copy>(
    map_fd: i32,
    keys: &[u32],
    values: &[V],
) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len());
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map_fd as u32,
        ..Default::default()
    };
    // SAFETY: `attr` points at `keys` and `values`, which outlive the call; the size
    // passed is the struct's (the kernel zero-extends the rest of bpf_attr).
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    if attr.count as usize != keys.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}
