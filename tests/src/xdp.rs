//! A pass-through XDP program attached natively to a lab interface: what a host whose
//! bridge side of a veth runs XDP looks like (native XDP_TX into a veth then works, and
//! frames from the host's own namespaces still carry partial checksums). Loaded with
//! bpf(2) directly: two instructions, no object file.

use std::{ffi::CString, io, process::Command};

use anyhow::{bail, Context, Result};

use crate::lab::ip;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const XDP_PASS: i32 = 2;

/// `bpf_attr` for BPF_PROG_LOAD, up to the fields used (the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u64; 16],
}

/// `bpf_attr` for BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    rest: [u64; 4],
}

/// Attaches `r0 = XDP_PASS; exit` to `dev` in namespace `ns`, in native (driver) mode. The
/// attachment lasts as long as the interface.
pub fn attach_pass_native(ns: &str, dev: &str) -> Result<()> {
    // mov64 r0, XDP_PASS; exit
    let insns: [u64; 2] = [0xb7 | ((XDP_PASS as u32 as u64) << 32), 0x95];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: bpf(2) with a valid attr of the size passed; the pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("cannot load a pass-through XDP program");
    }
    let fd = fd as i32;
    let pin = format!(
        "/sys/fs/bpf/bascule-test-xdp-pass-{}-{ns}-{dev}",
        std::process::id()
    );
    let path = CString::new(pin.clone()).expect("no NUL");
    let attr = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd as u32,
        ..Default::default()
    };
    // SAFETY: bpf(2) with a valid attr; then close(2) of our own fd.
    let pinned = unsafe {
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr,
            std::mem::size_of::<ObjPin>(),
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc == 0 {
            Ok(())
        } else {
            Err(err)
        }
    };
    pinned.with_context(|| {
        format!("cannot pin the pass-through program at {pin} (is /sys/fs/bpf a bpffs?)")
    })?;
    // Not `ip -n`: it remounts /sys, where the pin would not be found.
    let attached = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["ip", "link", "set", "dev", dev, "xdpdrv", "pinned", &pin])
        .output();
    let _ = std::fs::remove_file(&pin);
    let out = attached.context("cannot run nsenter (util-linux)")?;
    if !out.status.success() {
        bail!(
            "cannot attach the pass-through program to {dev} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !ip(&["-n", ns, "link", "show", "dev", dev])?.contains("xdp") {
        bail!("{dev} in {ns} shows no XDP program after attaching one");
    }
    Ok(())
}
