//! Commands the daemon runs for operators (`misc` health checks, VRRP notify scripts) run
//! without its capabilities: the child empties its bounding, ambient, inheritable,
//! permitted and effective sets before `exec`, so neither the command nor anything it
//! starts can load BPF programs, change the node's addresses or open raw sockets, even
//! as root (a root `exec` gets the bounding set, which is then empty). It keeps the
//! daemon's user and groups, environment (plus what the caller adds), and working
//! directory.

use std::io;

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Makes `cmd` drop every capability in the child, before it runs the program. Spawning
/// fails (the command does not run) if a root daemon cannot empty the child's bounding
/// set: that takes `CAP_SETPCAP`.
pub fn run_without_capabilities(cmd: &mut tokio::process::Command) {
    // SAFETY: the hook only makes raw prctl(2)/capset(2) calls (async-signal-safe, no
    // allocation), in the child between fork and exec.
    unsafe {
        cmd.pre_exec(drop_all);
    }
}

/// What to add to a spawn error of a command set up by [`run_without_capabilities`].
pub fn spawn_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EPERM) {
        " (a daemon running as root needs CAP_SETPCAP to run commands without its capabilities)"
    } else {
        ""
    }
}

/// Empties this process's capability sets (in a freshly forked child).
fn drop_all() -> io::Result<()> {
    // SAFETY: prctl(2) and capset(2) with constant arguments and a local buffer.
    unsafe {
        // Ambient first: it can only shrink, and needs no privilege. EINVAL: a kernel
        // before 4.3, which has no ambient set.
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(io::Error::last_os_error());
        }
        // The bounding set (needs CAP_SETPCAP, so before the effective set is cleared).
        // Reading past the last capability answers EINVAL.
        for cap in 0..64 {
            match libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) {
                1 => {}
                0 => continue,
                _ => break,
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                // A non-root exec takes nothing from the bounding set (only a file's
                // own capabilities, as for any user): what is left there is harmless.
                // A root exec takes all of it: refuse (EPERM, see `spawn_hint`).
                if libc::geteuid() == 0 {
                    return Err(io::Error::last_os_error());
                }
                break;
            }
        }
        let header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
