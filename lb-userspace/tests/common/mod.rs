//! Shared by the privileged tests and the bench of this crate: throwaway network
//! namespaces, the fixture harness, a packet builder/decoder for fixtures, and the health
//! checks' scale measurement.
#![allow(dead_code)]

pub mod harness;
pub mod packet;
pub mod scale;
pub mod servers;

use anyhow::{bail, Context, Result};
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// A network namespace made for one test, deleted on drop. Build it with `ip`, then run
/// the test body on a thread that entered it (`enter`).
pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "bfx{}-{}-{}",
            std::process::id(),
            tag,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A namespace of this name was left by a dead process whose id this one reuses
        // (killed before its namespaces were dropped): it is nobody's now.
        if std::path::Path::new("/run/netns").join(&name).exists() {
            ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        ip(&v);
    }

    /// Moves the calling thread into this namespace (for its lifetime).
    pub fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "link", "show", dev])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let i = text.find("\"ifindex\":").expect("ifindex in ip -j output") + 10;
        text[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves this thread (and threads it starts later) into a new network namespace, with
/// its loopback up. Needs CAP_SYS_ADMIN.
pub fn enter_private_netns() -> Result<()> {
    // SAFETY: unshare(2) affects only the calling thread here (CLONE_NEWNET).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "cannot create a network namespace: {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    set_loopback_up()
}

fn set_loopback_up() -> Result<()> {
    // SAFETY: a UDP socket used only for the interface ioctls below, closed at the end.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS with a valid ifreq naming "lo".
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result.context("cannot bring lo up in the new network namespace")
}
