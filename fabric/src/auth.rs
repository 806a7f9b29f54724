//! Cookie authentication of every daemon connection: a mutual HMAC-SHA256
//! challenge-response over the cluster's shared secret, with a protocol version
//! check. Neither side ever sends the secret, and each proves it holds it on a
//! fresh nonce of the other's.

use crate::wire::{read_frame, write_frame};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::{
    fmt, io,
    net::{IpAddr, TcpStream},
    time::Duration,
};

/// The protocol version; both ends must speak the same.
pub const VERSION: u32 = 1;
const MAGIC: &str = "constellation";
/// The largest handshake frame.
const MAX_HANDSHAKE: usize = 4096;
/// How long a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The master, to a node.
    Master,
    /// `cargo deploy`, to the bridge daemon.
    Deploy,
    /// A node daemon registering with its master (in a Slurm allocation).
    Node,
}

#[derive(Serialize, Deserialize)]
struct Challenge {
    magic: String,
    version: u32,
    nonce: [u64; 4],
}

#[derive(Serialize, Deserialize)]
struct Response {
    version: u32,
    role: Role,
    nonce: [u64; 4],
    mac: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum Verdict {
    Welcome { mac: Vec<u8> },
    Refused { reason: String },
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum AuthError {
    /// The connection failed or the peer vanished.
    Io(io::Error),
    /// The peer is not a constellation daemon or client of this version.
    Protocol(String),
    /// The peer refused this side (wrong cookie, wrong role); the reason is its own.
    Refused(String),
    /// The peer does not hold the cluster's cookie.
    WrongCookie,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Io(error) => write!(f, "the connection failed during the handshake: {error}"),
            AuthError::Protocol(what) => f.write_str(what),
            AuthError::Refused(reason) => write!(f, "refused by the daemon: {reason}"),
            AuthError::WrongCookie => f.write_str(
                "the peer does not know the cluster's cookie: give both sides the same --cookie-file or CONSTELLATION_COOKIE",
            ),
        }
    }
}

impl std::error::Error for AuthError {}

impl From<io::Error> for AuthError {
    fn from(error: io::Error) -> AuthError {
        if error.kind() == io::ErrorKind::InvalidData {
            AuthError::Protocol(format!("not a constellation peer: {error}"))
        } else {
            AuthError::Io(error)
        }
    }
}

fn nonce() -> [u64; 4] {
    std::array::from_fn(|_| constellation::cluster::random_u64())
}

fn mac(cookie: &[u8], label: &[u8], first: &[u64; 4], second: &[u64; 4]) -> Hmac<sha2::Sha256> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(cookie).expect("HMAC takes keys of any length");
    mac.update(label);
    for word in first.iter().chain(second) {
        mac.update(&word.to_le_bytes());
    }
    mac
}

/// The daemon's side: checks that the peer holds `cookie` and connects as
/// `expected`, and proves this side holds it too.
pub fn accept(stream: &mut TcpStream, cookie: &[u8], expected: Role) -> Result<(), AuthError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let ours = nonce();
    write_frame(stream, &Challenge { magic: MAGIC.into(), version: VERSION, nonce: ours })?;
    let response: Response = read_frame(stream, MAX_HANDSHAKE)?;
    let refuse = |stream: &mut TcpStream, reason: String| {
        let _ = write_frame(stream, &Verdict::Refused { reason: reason.clone() });
        reason
    };
    if response.version != VERSION {
        let reason =
            refuse(stream, format!("this daemon speaks protocol version {VERSION}, the peer {}", response.version));
        return Err(AuthError::Protocol(reason));
    }
    if mac(cookie, b"client", &ours, &response.nonce).verify_slice(&response.mac).is_err() {
        refuse(stream, "wrong cookie".into());
        return Err(AuthError::WrongCookie);
    }
    if response.role != expected {
        let reason = refuse(stream, format!("this daemon accepts {expected:?} connections, not {:?}", response.role));
        return Err(AuthError::Protocol(reason));
    }
    let proof = mac(cookie, b"server", &response.nonce, &ours).finalize().into_bytes().to_vec();
    write_frame(stream, &Verdict::Welcome { mac: proof })?;
    stream.set_read_timeout(None)?;
    Ok(())
}

/// The connecting side: proves it holds `cookie`, as `role`, and checks the
/// daemon holds it too.
pub fn connect(stream: &mut TcpStream, cookie: &[u8], role: Role) -> Result<(), AuthError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let challenge: Challenge = read_frame(stream, MAX_HANDSHAKE)?;
    if challenge.magic != MAGIC {
        return Err(AuthError::Protocol("the peer is not a constellation daemon".into()));
    }
    if challenge.version != VERSION {
        return Err(AuthError::Protocol(format!(
            "the daemon speaks protocol version {}, this side {VERSION}: run the same constellation version everywhere",
            challenge.version
        )));
    }
    let ours = nonce();
    let proof = mac(cookie, b"client", &challenge.nonce, &ours).finalize().into_bytes().to_vec();
    write_frame(stream, &Response { version: VERSION, role, nonce: ours, mac: proof })?;
    match read_frame(stream, MAX_HANDSHAKE)? {
        Verdict::Welcome { mac: theirs } => {
            if mac(cookie, b"server", &ours, &challenge.nonce).verify_slice(&theirs).is_err() {
                return Err(AuthError::WrongCookie);
            }
        }
        Verdict::Refused { reason } => return Err(AuthError::Refused(reason)),
    }
    stream.set_read_timeout(None)?;
    Ok(())
}

/// The cluster's cookie: the contents of `file` (trailing whitespace removed), else
/// `CONSTELLATION_COOKIE`, else none.
pub fn load_cookie(file: Option<&std::path::Path>) -> io::Result<Option<Vec<u8>>> {
    if let Some(file) = file {
        let bytes = std::fs::read(file)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read the cookie file {}: {e}", file.display())))?;
        let trimmed = String::from_utf8_lossy(&bytes).trim_end().as_bytes().to_vec();
        if trimmed.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the cookie file {} is empty", file.display()),
            ));
        }
        return Ok(Some(trimmed));
    }
    Ok(std::env::var("CONSTELLATION_COOKIE").ok().filter(|c| !c.is_empty()).map(String::into_bytes))
}

/// Refuses to serve a non-loopback address without a cookie: anyone on the
/// network could otherwise run code on the cluster.
pub fn check_exposure(ip: IpAddr, cookie: &Option<Vec<u8>>) -> Result<(), String> {
    if cookie.is_none() && !ip.is_loopback() {
        return Err(format!(
            "refusing to listen on {ip}, which is not a loopback address, without a cookie: \
             pass --cookie-file FILE or set CONSTELLATION_COOKIE (the same on every daemon and for cargo deploy)"
        ));
    }
    Ok(())
}
