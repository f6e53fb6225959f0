//! A tiny HTTP/1.0 server and client that run on threads inside a lab namespace.
//!
//! The server answers every request with its name as the body, so a client can tell
//! which backend it reached, and counts what it served so a test can compare the two
//! sides. It closes each connection after the response (HTTP/1.0), so the server side
//! holds TIME_WAIT and a client may reuse its source port at once.

use std::{
    io::{self, ErrorKind, Read, Write},
    mem,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::lab::{enter_netns, in_netns};

/// Time a server connection may take to send its request.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Largest request head the server reads, and largest response the client reads.
const MAX_MESSAGE: usize = 64 * 1024;

/// A running server; stops (and joins its thread) when dropped or by [`HttpServer::stop`].
pub struct HttpServer {
    name: String,
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// The body this server answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Responses fully written so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Stops accepting, and returns how many requests it served.
    pub fn stop(mut self) -> usize {
        self.shutdown();
        self.served()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a server in namespace `ns` listening on `addr`, answering every request with
/// body `name` followed by a newline. `[::]:PORT` also accepts IPv4 (the namespace's
/// `bindv6only` is 0), so one server per backend serves both families.
pub fn http_server(ns: &str, addr: SocketAddr, name: &str) -> Result<HttpServer> {
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let thread = {
        let (ns, name, served, stop) = (
            ns.to_string(),
            name.to_string(),
            served.clone(),
            stop.clone(),
        );
        thread::Builder::new()
            .name(format!("http-{name}"))
            .spawn(move || {
                let listener = enter_netns(&ns).and_then(|()| {
                    let listener = TcpListener::bind(addr)
                        .with_context(|| format!("cannot listen on {addr} in {ns}"))?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                });
                match listener {
                    Ok(listener) => {
                        let _ = ready_tx.send(Ok(()));
                        accept_loop(listener, &name, &served, &stop);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .context("cannot spawn the server thread")?
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("server {name} in {ns} did not start within 5 s"))??;
    Ok(HttpServer {
        name: name.to_string(),
        addr,
        served,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: TcpListener, name: &str, served: &Arc<AtomicUsize>, stop: &AtomicBool) {
    let body = format!("{name}\n");
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (body, served) = (body.clone(), served.clone());
                // One short-lived thread per connection: a stalled client cannot block
                // the others, and each is bounded by SERVER_IO_TIMEOUT.
                let _ = thread::Builder::new().spawn(move || serve_one(stream, &body, &served));
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

/// Answers one request. Counts it before closing, so that a client that has seen the
/// whole answer (up to the server's FIN) also sees it counted.
fn serve_one(mut stream: TcpStream, body: &str, served: &AtomicUsize) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > MAX_MESSAGE {
            return Err(ErrorKind::InvalidData.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    served.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// `GET /` to `addr` from namespace `ns` on a new connection; returns the body without
/// its trailing newline. The whole exchange is bounded by `timeout`.
pub fn http_get(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<String> {
    in_netns(ns, move || {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        exchange(stream, addr, Instant::now() + timeout)
    })
}

/// Like [`http_get`], from a fixed local address and port (`SO_REUSEADDR`), so that a
/// test can send several connections with the same 5-tuple.
pub fn http_get_from(
    ns: &str,
    local: SocketAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String> {
    in_netns(ns, move || {
        let stream = connect_from(local, addr, timeout)
            .with_context(|| format!("cannot connect from {local} to {addr}"))?;
        exchange(stream, addr, Instant::now() + timeout)
    })
}

/// One HTTP/1.0 request from namespace `ns` (`Connection: close`): returns the status
/// code and the body, whatever the status. For bascule's API.
pub fn http_request(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: bascule-tests\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.map_or(0, str::len),
        body.unwrap_or("")
    );
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream
            .take(MAX_MESSAGE as u64 * 64)
            .read_to_end(&mut response)
            .with_context(|| format!("reading the answer of {addr}"))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("answer of {addr} has no HTTP header: {text:?}"))?;
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("answer of {addr} has no status: {head:?}"))?;
        Ok((status, body.to_string()))
    })
}

fn exchange(mut stream: TcpStream, addr: SocketAddr, deadline: Instant) -> Result<String> {
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("no complete answer from {addr} in time"))
    };
    stream.set_write_timeout(Some(remaining()?))?;
    // One write, one segment: easier to read in a capture.
    let request = format!("GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: bascule-tests\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(remaining()?))?;
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("reading the answer of {addr}"))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() > MAX_MESSAGE {
            bail!("answer of {addr} is larger than {MAX_MESSAGE} bytes");
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("answer of {addr} has no HTTP header: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{addr} answered `{status}`");
    }
    Ok(body.trim_end().to_string())
}

/// connect(2) from a bound local address. SO_SNDTIMEO bounds a blocking connect on Linux.
fn connect_from(local: SocketAddr, remote: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "address families differ",
        ));
    }
    let domain = if remote.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2); the fd is owned by the TcpStream right after.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid, owned socket.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_write_timeout(Some(timeout))?;
    let (storage, len) = sockaddr(local);
    // SAFETY: storage holds a sockaddr of `len` bytes.
    if unsafe {
        libc::bind(
            stream.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let (storage, len) = sockaddr(remote);
    // SAFETY: as above.
    if unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    } != 0
    {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EINPROGRESS) {
            io::Error::new(ErrorKind::TimedOut, "connect timed out")
        } else {
            err
        });
    }
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
