//! The streams between processes: TCP, or a Unix socket when the peer is on the
//! same host, which costs the kernel much less per message: loopback TCP runs
//! the whole TCP/IP path for each write (a round trip of 8 bytes between two
//! processes takes about 15 µs over a Unix socket and 24 µs over TCP on the
//! development machine; 1 MiB writes go twice as fast).
//!
//! A process's TCP address names it (its [`Pid`](crate::Pid)). It also listens
//! on the abstract Unix socket named after that address, so a peer that shares
//! its IP address connects there first. Abstract names belong to a network
//! namespace, like the IP addresses themselves; when the name is not found (or
//! its backlog is full), the peer connects over TCP.

use crate::sys;
use mio::{
    event::Source,
    net::{TcpStream, UnixStream},
    Interest, Registry, Token,
};
use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, RawFd},
        linux::net::SocketAddrExt,
        unix::net::SocketAddr as UnixAddr,
    },
};

/// The send buffer asked for on Unix sockets: TCP's largest by default.
const LOCAL_SEND_BUFFER: usize = 4 << 20;

/// A connection to a peer process.
#[derive(Debug)]
pub(crate) enum Stream {
    /// To a process on another host.
    Tcp(TcpStream),
    /// To a process on this host.
    Local(UnixStream),
}

/// The abstract Unix socket of the process that listens on TCP `addr`.
fn local_name(addr: SocketAddr) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(format!("constellation/{addr}"))
}

/// The listeners of a process: TCP, which names it, and the Unix socket for
/// peers on this host. Whoever starts a process binds both before anyone learns
/// its `Pid`, so that a peer connecting at once finds the Unix socket; a
/// process started without one binds it itself.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// The TCP listener.
    pub(crate) tcp: std::net::TcpListener,
    /// The Unix socket named after the TCP address.
    pub(crate) local: Option<std::os::unix::net::UnixListener>,
}

/// Binds a new process's listeners on 127.0.0.1: an ephemeral TCP port, and
/// the Unix socket named after it. A port whose name is taken (by a process
/// that kept its Unix socket and closed its port) is passed over.
pub(crate) fn bind_loopback() -> io::Result<(std::net::TcpListener, std::os::unix::net::UnixListener)> {
    let mut passed_over = Vec::new();
    loop {
        let tcp = sys::bind_loopback()?;
        match bind_local(&tcp) {
            Ok(local) => return Ok((tcp, local)),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && passed_over.len() < 8 => passed_over.push(tcp),
            Err(error) => return Err(error),
        }
    }
}

/// Binds the Unix socket of the process whose TCP listener is `tcp`.
fn bind_local(tcp: &std::net::TcpListener) -> io::Result<std::os::unix::net::UnixListener> {
    listen_locally(tcp.local_addr()?)
}

/// Listens on the Unix socket of the process whose TCP listener is at `addr`.
/// With the same long backlog as a port.
pub(crate) fn listen_locally(addr: SocketAddr) -> io::Result<std::os::unix::net::UnixListener> {
    let local = std::os::unix::net::UnixListener::bind_addr(&local_name(addr)?)?;
    sys::listen(local.as_raw_fd())?;
    Ok(local)
}

impl Stream {
    /// Starts connecting to the process that listens on TCP `to`, from the one
    /// that listens on TCP `me`.
    pub(crate) fn connect(to: SocketAddr, me: SocketAddr) -> io::Result<Stream> {
        if to.ip() == me.ip() {
            if let Ok(stream) = local_name(to).and_then(|name| UnixStream::connect_addr(&name)) {
                return Ok(Stream::local(stream));
            }
        }
        let stream = TcpStream::connect(to)?;
        let _ = stream.set_nodelay(true);
        Ok(Stream::Tcp(stream))
    }

    /// A connection over a Unix socket, with a send buffer as large as TCP's
    /// grows to: a Unix socket's sender waits for the receiver to read, and with
    /// the default buffer (208 KiB) large values go in many small steps.
    pub(crate) fn local(stream: UnixStream) -> Stream {
        let _ = sys::set_send_buffer(stream.as_raw_fd(), LOCAL_SEND_BUFFER);
        Stream::Local(stream)
    }

    /// An accepted TCP connection.
    pub(crate) fn accepted(stream: TcpStream) -> Stream {
        let _ = stream.set_nodelay(true);
        Stream::Tcp(stream)
    }

    /// The error the socket holds, if any (a failed connect).
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(stream) => stream.take_error(),
            Stream::Local(stream) => stream.take_error(),
        }
    }

    /// Whether bytes written may still wait in this kernel: only TCP keeps
    /// them (a Unix socket puts them in the peer's queue at once).
    pub(crate) fn may_hold_unsent(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Local(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Local(stream) => stream.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write_vectored(bufs),
            Stream::Local(stream) => stream.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(stream) => stream.as_raw_fd(),
            Stream::Local(stream) => stream.as_raw_fd(),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.register(registry, token, interests),
            Stream::Local(stream) => stream.register(registry, token, interests),
        }
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.reregister(registry, token, interests),
            Stream::Local(stream) => stream.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.deregister(registry),
            Stream::Local(stream) => stream.deregister(registry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_local(stream: &Stream) -> bool {
        matches!(stream, Stream::Local(_))
    }

    #[test]
    fn a_peer_on_this_host_is_reached_over_its_unix_socket_else_over_tcp() {
        let (me, _my_local) = bind_loopback().unwrap();
        let me = me.local_addr().unwrap();
        let (with_socket, _local) = bind_loopback().unwrap();
        assert!(is_local(&Stream::connect(with_socket.local_addr().unwrap(), me).unwrap()));
        // A process listening on TCP only (a deployed one not yet started, or
        // one in another network namespace) is reached over TCP.
        let tcp_only = sys::bind_loopback().unwrap();
        assert!(!is_local(&Stream::connect(tcp_only.local_addr().unwrap(), me).unwrap()));
        // So is one at another address, even if a Unix socket has its name here.
        let other_ip: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let _squatter = listen_locally(other_ip).unwrap();
        let elsewhere = Stream::connect(other_ip, me);
        assert!(elsewhere.as_ref().map_or(true, |stream| !is_local(stream)));
    }
}
