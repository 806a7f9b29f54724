//! `Pid`: the job-wide identity of a process, with its address and incarnation.

use serde::{Deserialize, Serialize};
use std::{
    fmt,
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

/// The identity of a process of the job, valid everywhere in the job.
///
/// A `Pid` carries the address the process listens on and a job-unique incarnation
/// number, so it is never reused within a job, even when a port is. It displays as
/// the seven-hex-character tag the job's bridge allocated for it (as `3fecd01`),
/// which is how the bridge's output names the process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pid {
    incarnation: u64,
    ip: [u8; 4],
    port: u16,
}

/// Tags are a bijection of the incarnation number onto 28 bits, so they are unique
/// within a job of up to 2^28 processes and do not look sequential.
const TAG_BITS: u32 = 28;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

impl Pid {
    pub(crate) fn new(addr: SocketAddr, incarnation: u64) -> Pid {
        let ip = match addr.ip() {
            IpAddr::V4(ip) => ip.octets(),
            IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST).octets(),
        };
        Pid { incarnation, ip, port: addr.port() }
    }

    /// The address this process accepts channel connections on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.ip)), self.port)
    }

    /// The job-unique incarnation number the bridge allocated.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The seven-hex-character tag that names this process in output.
    pub fn tag(&self) -> String {
        format!("{:07x}", scramble(self.incarnation))
    }
}

/// An invertible mix of the low 28 bits: odd multipliers and xor-shifts are bijective.
fn scramble(n: u64) -> u64 {
    let mut x = n & TAG_MASK;
    x = x.wrapping_mul(0x9E3_779B) & TAG_MASK;
    x ^= x >> 13;
    x = x.wrapping_mul(0x5BD_1E99) & TAG_MASK;
    x ^= x >> 11;
    x
}

impl Hash for Pid {
    /// The incarnation alone: it is unique within a job, and one word hashes fast.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.incarnation);
    }
}

/// A fast hasher for tables keyed by [`Pid`] (whose hash is one unique word).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct PidHasher(u64);

impl Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A `HashMap` keyed by [`Pid`].
pub(crate) type PidMap<V> = std::collections::HashMap<Pid, V, std::hash::BuildHasherDefault<PidHasher>>;

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag())
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({} at {})", self.tag(), self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tags_are_unique_and_seven_characters() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let tags: HashSet<String> = (0..200_000).map(|i| Pid::new(addr, i).tag()).collect();
        assert_eq!(tags.len(), 200_000);
        assert!(tags.iter().all(|t| t.len() == 7));
    }
}
