//! The service manager's side channels, written by hand (no libsystemd): the notification
//! socket (`NOTIFY_SOCKET`: readiness, reloads, watchdog pings, status), the watchdog's
//! period (`WATCHDOG_USEC`, `WATCHDOG_PID`), and whether stderr goes to the journal
//! (`JOURNAL_STREAM`). Without those variables (not started by systemd) everything here
//! does nothing.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    sync::Arc,
    time::Duration,
};

/// Where notifications go: the datagram socket named by `NOTIFY_SOCKET` (a path, or an
/// abstract name written `@name`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    socket: Arc<UnixDatagram>,
    address: Arc<SocketAddr>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if it is set (`None`: nobody listens).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) if !name.is_empty() => Notifier::new(&name.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier sending to `name`: a filesystem path, or `@` and an abstract name.
    pub fn new(name: &str) -> io::Result<Notifier> {
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={name}: neither an absolute path nor @abstract"),
                ))
            }
        };
        Ok(Notifier {
            socket: Arc::new(UnixDatagram::unbound()?),
            address: Arc::new(address),
        })
    }

    /// Sends one notification: newline-separated `KEY=VALUE` assignments.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.address)
            .map(drop)
    }

    /// Sends, and logs (without failing) what could not be sent.
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!("cannot notify the service manager ({message:?}): {e}");
        }
    }
}

/// `RELOADING=1` with the time the reload started, as `Type=notify-reload` wants it.
pub fn reloading_message() -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
}

/// `CLOCK_MONOTONIC` in microseconds.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given; CLOCK_MONOTONIC exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The watchdog's timeout (`WATCHDOG_USEC`), if the service manager asks this process for
/// pings: set, positive, and `WATCHDOG_PID` absent or ours.
pub fn watchdog_timeout() -> Option<Duration> {
    watchdog_timeout_of(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_timeout`] from the variables' values and this process' id.
pub fn watchdog_timeout_of(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => {}
        Some(Ok(p)) if p == me => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// Whether stderr is the journal's stream (`JOURNAL_STREAM` is `DEVICE:INODE` of the
/// stream systemd connected): the journal stamps each line, so logs need no time of their
/// own there.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat(2) on fd 2 writes only the stat buffer it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    journal_stream_matches(&stream, st.st_dev, st.st_ino)
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` against a file's.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_for_this_process_only() {
        let s = |u| Some(Duration::from_micros(u));
        assert_eq!(
            watchdog_timeout_of(Some("30000000"), None, 7),
            s(30_000_000)
        );
        assert_eq!(watchdog_timeout_of(Some("1000"), Some("7"), 7), s(1000));
        assert_eq!(watchdog_timeout_of(Some("1000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout_of(Some("1000"), Some("x"), 7), None);
        assert_eq!(watchdog_timeout_of(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout_of(Some("soon"), None, 7), None);
        assert_eq!(watchdog_timeout_of(None, Some("7"), 7), None);
    }

    #[test]
    fn journal_stream() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("", 0, 0));
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("bascule-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let abstract_name = format!("bascule-notify-test-{}", std::process::id());
        let abstract_listener = UnixDatagram::bind_addr(
            &SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut buf = [0u8; 256];
        Notifier::new(path.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        Notifier::new(&format!("@{abstract_name}"))
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(Notifier::new("relative.sock").is_err());
        let before = monotonic_usec();
        let m = reloading_message();
        let usec: u64 = m
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec >= before && usec < before + 1_000_000, "{m}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
