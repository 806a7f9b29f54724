//! The frames on every daemon connection, and the messages they carry.
//!
//! A frame is the core's: a little-endian `u32` length, a kind byte, then one
//! bincode value. Every reader bounds the length it accepts, so garbage or an
//! oversized frame is refused before anything is allocated for it.

use constellation::cluster::{self, ProcessImage};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The largest frame on a daemon connection: binaries cross in chunks below it.
pub const MAX_FRAME: usize = 4 << 20;
/// The largest frame from an authenticated master: a spawn carries its closure,
/// which may hold much data.
pub const MAX_MASTER_FRAME: usize = 1 << 30;
/// The size of one chunk of an uploaded binary.
pub const CHUNK: usize = 1 << 20;

/// Writes `value` as one frame.
pub fn write_frame<T: Serialize>(writer: &mut impl Write, value: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    cluster::append_frame(&mut buf, value)?;
    writer.write_all(&buf)
}

/// Reads one frame of at most `max` bytes and decodes its value.
pub fn read_frame<T: DeserializeOwned>(reader: &mut impl Read, max: usize) -> io::Result<T> {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {max} are accepted): not a constellation peer, or a corrupt one"),
        ));
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&header);
    frame.resize(4 + len, 0);
    reader.read_exact(&mut frame[5..])?;
    match cluster::next_frame(&frame)? {
        Some((value, _)) => Ok(value),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, "a truncated frame")),
    }
}

/// Reads the `len` raw bytes that follow a chunk's frame (at most [`CHUNK`]).
pub fn read_chunk(reader: &mut impl Read, len: u32) -> io::Result<Vec<u8>> {
    let len = len as usize;
    if len > CHUNK {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a chunk of {len} bytes (at most {CHUNK})")));
    }
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data)?;
    Ok(data)
}

/// What the master tells a node.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
pub enum ToNode {
    /// The first message: how often to send heartbeats and how long a lease lasts.
    Config { heartbeat_ms: u64, lease_ms: u64 },
    /// Part of a binary: `len` raw bytes follow the frame. The node checks the
    /// whole against `hash` after the `last` part.
    BinaryChunk { hash: String, len: u32, last: bool },
    /// Start process `id` of job `job` from the binary `hash`.
    Spawn { job: u64, id: u64, hash: String, image: ProcessImage },
    /// Kill every process of `job` (its bridge has gone).
    KillJob { job: u64 },
    /// The heartbeat `seq` arrived; the node's lease runs from when it sent it.
    HeartbeatAck { seq: u64 },
}

/// What a node tells the master.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
pub enum FromNode {
    /// The answer to `Config`: the binaries this node has cached.
    Ready { cached: Vec<String> },
    /// Process `id` of `job` started; it listens on `port` of the node's address.
    Started { job: u64, id: u64, port: u16 },
    /// Process `id` of `job` could not be started.
    Failed { job: u64, id: u64, error: String },
    /// The monitor of process `id` of `job` has ended (with exit `code`, or by `signal`).
    Ended { job: u64, id: u64, code: Option<i32>, signal: Option<i32> },
    /// Still here.
    Heartbeat { seq: u64 },
}

/// What `cargo deploy` tells the bridge daemon.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
pub enum ToBridge {
    /// Run a binary of `size` bytes (chunks follow) whose SHA-256 is `hash`.
    Deploy {
        /// The program's name (`argv[0]`).
        name: String,
        /// The arguments after the name.
        args: Vec<String>,
        /// Environment variables to set for the job's processes.
        vars: Vec<(String, String)>,
        /// JSON lines instead of the human format.
        json: bool,
        size: u64,
        hash: String,
    },
    /// Part of the binary: `len` raw bytes follow the frame.
    Chunk { len: u32 },
    /// Bytes for the top process's stdin (empty: end of input).
    Stdin { data: Vec<u8> },
    /// Ctrl-C: stop the job.
    Stop,
}

/// What the bridge daemon tells `cargo deploy`.
// Each variant's doc names its fields.
#[allow(missing_docs)]
#[derive(Debug, Serialize, Deserialize)]
pub enum FromBridge {
    /// Bytes for `cargo deploy`'s stdout (`fd` 1) or stderr (`fd` 2).
    Output { fd: u8, data: Vec<u8> },
    /// The job has ended with this exit code.
    Exit { code: i32 },
    /// The deployment was refused or failed; nothing ran, or the job was stopped.
    Error { message: String },
}

/// The SHA-256 of `bytes`, in hex: how binaries are named.
pub fn hash_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a node daemon started in a Slurm allocation tells its master.
#[derive(Debug, Serialize, Deserialize)]
pub struct Registration {
    /// The node's Slurm name.
    pub name: String,
    /// Where its daemon listens.
    pub addr: std::net::SocketAddr,
}
