//! The bridge daemon: accepts `cargo deploy` connections (cookie-authenticated),
//! receives each binary (checked against its hash, stored by it), and starts one
//! bridge per deployment: this same executable, exec'd with the deployment's
//! connection, a connection to the master's scheduler and its settings.

use crate::{
    auth::{self, Role},
    master::Master,
    reaper,
    wire::{hash_hex, read_frame, write_frame, FromBridge, ToBridge, MAX_FRAME},
};
use serde::{Deserialize, Serialize};
use std::{
    fs,
    io::{self, Write},
    net::{IpAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

/// The environment variable that makes this executable a deployment's bridge:
/// `deploy_fd,scheduler_fd,settings_fd`.
pub const BRIDGE_VAR: &str = "CONSTELLATION_FABRIC_BRIDGE";

/// The largest binary accepted.
const MAX_BINARY: u64 = 4 << 30;

/// What a deployment's bridge is told.
#[derive(Debug, Serialize, Deserialize)]
pub struct BridgeSettings {
    /// The stored binary.
    pub binary: PathBuf,
    /// `argv[0]`.
    pub name: String,
    /// The arguments after the name.
    pub args: Vec<String>,
    /// The environment of the job's processes.
    pub vars: Vec<(String, String)>,
    /// JSON lines instead of the human format.
    pub json: bool,
    /// The address processes connect back to.
    pub bind: IpAddr,
    /// How long the binary has to call `init` when probed.
    pub probe_timeout: Duration,
    /// How the bridge and its processes' monitors watch each other.
    pub heartbeats: constellation::cluster::Heartbeats,
}

/// How the bridge daemon runs.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// The cluster's secret.
    pub cookie: Option<Vec<u8>>,
    /// Where binaries are stored.
    pub work_dir: PathBuf,
    /// How long a binary has to call `init` when probed.
    pub probe_timeout: Duration,
    /// How each job's bridge and its processes' monitors watch each other.
    pub heartbeats: constellation::cluster::Heartbeats,
}

/// Serves deployments on `listener` until the process is killed.
pub fn serve(listener: TcpListener, master: Arc<Master>, options: DeployOptions) -> io::Result<()> {
    fs::create_dir_all(options.work_dir.join("binaries"))?;
    let bind = listener.local_addr()?.ip();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                log::warn!("accepting a deployment: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (master, options) = (master.clone(), options.clone());
        let _ = std::thread::Builder::new().name("deployment".into()).spawn(move || {
            let peer = stream.peer_addr().map_or_else(|_| "an unknown peer".to_string(), |a| a.to_string());
            if let Err(error) = deployment(stream, &master, &options, bind) {
                log::warn!("a deployment from {peer} failed: {error}");
            }
        });
    }
    Ok(())
}

fn deployment(mut stream: TcpStream, master: &Arc<Master>, options: &DeployOptions, bind: IpAddr) -> io::Result<()> {
    let cookie = options.cookie.clone().unwrap_or_default();
    auth::accept(&mut stream, &cookie, Role::Deploy).map_err(io::Error::other)?;
    let _ = stream.set_nodelay(true);
    let refuse = |stream: &mut TcpStream, message: String| {
        let _ = write_frame(stream, &FromBridge::Error { message: message.clone() });
        io::Error::new(io::ErrorKind::InvalidData, message)
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (name, args, vars, json, size, hash) = match read_frame(&mut stream, MAX_FRAME)? {
        ToBridge::Deploy { name, args, vars, json, size, hash } => (name, args, vars, json, size, hash),
        other => return Err(refuse(&mut stream, format!("expected a deployment, got {other:?}"))),
    };
    if size > MAX_BINARY {
        return Err(refuse(&mut stream, format!("a binary of {size} bytes is larger than the {MAX_BINARY} accepted")));
    }
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(&mut stream, format!("{hash:?} is not a SHA-256 in hex")));
    }
    let binary = options.work_dir.join("binaries").join(&hash);
    let mut bytes = Vec::with_capacity(size.min(1 << 30) as usize);
    while (bytes.len() as u64) < size {
        match read_frame(&mut stream, MAX_FRAME) {
            Ok(ToBridge::Chunk { len }) => bytes.extend_from_slice(&crate::wire::read_chunk(&mut stream, len)?),
            Ok(other) => return Err(refuse(&mut stream, format!("expected part of the binary, got {other:?}"))),
            Err(error) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("the binary was cut off after {} of {size} bytes: {error}", bytes.len()),
                ))
            }
        }
    }
    stream.set_read_timeout(None)?;
    if bytes.len() as u64 != size || hash_hex(&bytes) != hash {
        return Err(refuse(&mut stream, format!("the binary received does not match its hash {hash}")));
    }
    if !binary.exists() {
        let part = binary.with_extension("part");
        fs::File::create(&part)?.write_all(&bytes)?;
        fs::set_permissions(&part, fs::Permissions::from_mode(0o755))?;
        fs::rename(&part, &binary)?;
    }
    drop(bytes);
    log::info!("deploying {name} ({hash}, {size} bytes)");
    let (scheduler_ours, scheduler_theirs) = UnixStream::pair()?;
    let job = master.add_job(scheduler_ours, hash, binary.clone())?;
    let settings = BridgeSettings {
        binary,
        name,
        args,
        vars,
        json,
        bind,
        probe_timeout: options.probe_timeout,
        heartbeats: options.heartbeats,
    };
    let settings = constellation::cluster::memfd_with(&constellation::cluster::encode(&settings)?)?;
    let fds = [stream.as_raw_fd(), scheduler_theirs.as_raw_fd(), settings.as_raw_fd()];
    let mut command = Command::new("/proc/self/exe");
    command.env(BRIDGE_VAR, format!("{},{},{}", fds[0], fds[1], fds[2])).stdin(Stdio::null());
    reaper::spawn(&mut command, &fds, move |pid, ended| {
        log::info!("the bridge of job {job} (pid {pid}) ended: {ended:?}")
    })?;
    Ok(())
}
