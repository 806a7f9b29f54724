//! The node role: accepts its master (and nobody else), caches the binaries it
//! is sent by their hash, starts processes as its own children with the fds a
//! deployed process starts from, reports how each ended, and holds the node's
//! lease: it sends heartbeats, and each one the master acknowledges extends the
//! lease from when it was sent. Every process's monitor is told each new deadline
//! and kills its process when the deadline passes unrenewed.

use crate::{
    auth::{self, Role},
    reaper,
    wire::{read_frame, write_frame, FromNode, ToNode, MAX_FRAME, MAX_MASTER_FRAME},
};
use constellation::cluster::{self, ProcessImage};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{self, Write},
    net::{IpAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    },
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// How a node daemon runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The cluster's secret; `None` only on loopback addresses.
    pub cookie: Option<Vec<u8>>,
    /// Where binaries are cached and processes get their scratch directories.
    pub work_dir: PathBuf,
    /// Hold each process to its CPU share as a hard quota, not only a weight.
    pub cpu_quota: bool,
    /// Exit once the first master has gone (a node started for one job, as in a
    /// Slurm allocation), instead of waiting for the next.
    pub exit_with_master: bool,
}

/// A process this node started.
struct Process {
    job: u64,
    id: u64,
    session: u64,
    /// The write end of its monitor's lease pipe.
    lease: fs::File,
    cgroup: String,
}

/// One master's connection.
struct Session {
    id: u64,
    writer: Mutex<TcpStream>,
    alive: AtomicBool,
    /// The lease deadline (monotonic ns); 0 until the first acknowledged heartbeat.
    deadline: AtomicU64,
    /// When each unacknowledged heartbeat was sent (monotonic ns).
    sent: Mutex<HashMap<u64, u64>>,
}

impl Session {
    fn send(&self, message: &FromNode) {
        if self.alive.load(Ordering::SeqCst) {
            let mut writer = self.writer.lock();
            if let Err(error) = write_frame(&mut *writer, message) {
                log::debug!("telling the master {message:?}: {error}");
            }
        }
    }
}

struct Node {
    options: NodeOptions,
    ip: IpAddr,
    /// Live processes by OS pid.
    processes: Mutex<HashMap<i32, Process>>,
    current: Mutex<Option<Arc<Session>>>,
    next_session: AtomicU64,
}

/// Serves as a node on `listener` until the process is killed.
pub fn serve(listener: TcpListener, options: NodeOptions) -> io::Result<()> {
    let addr = listener.local_addr()?;
    fs::create_dir_all(options.work_dir.join("bin"))?;
    fs::create_dir_all(options.work_dir.join("jobs"))?;
    let node = Arc::new(Node {
        options,
        ip: addr.ip(),
        processes: Mutex::new(HashMap::new()),
        current: Mutex::new(None),
        next_session: AtomicU64::new(1),
    });
    log::info!("node listening on {addr}, work directory {}", node.options.work_dir.display());
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                log::warn!("accepting a connection: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let node = node.clone();
        let _ = std::thread::Builder::new().name("master".into()).spawn(move || node.serve_master(stream));
    }
    Ok(())
}

impl Node {
    fn serve_master(self: Arc<Self>, mut stream: TcpStream) {
        let peer = stream.peer_addr().map_or_else(|_| "an unknown peer".to_string(), |a| a.to_string());
        let cookie = self.options.cookie.clone().unwrap_or_default();
        if let Err(error) = auth::accept(&mut stream, &cookie, Role::Master) {
            log::warn!("refused a connection from {peer}: {error}");
            return;
        }
        let _ = stream.set_nodelay(true);
        let Ok(writer) = stream.try_clone() else { return };
        let session = Arc::new(Session {
            id: self.next_session.fetch_add(1, Ordering::SeqCst),
            writer: Mutex::new(writer),
            alive: AtomicBool::new(true),
            deadline: AtomicU64::new(0),
            sent: Mutex::new(HashMap::new()),
        });
        // A new master replaces the old one, whose processes nobody watches now.
        if let Some(old) = self.current.lock().replace(session.clone()) {
            self.end_session(&old, "another master connected");
        }
        log::info!("master {peer} connected");
        let error = match self.run_session(&session, &mut stream) {
            Ok(()) => "it closed the connection".to_string(),
            Err(error) => error.to_string(),
        };
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.id == session.id) {
            *current = None;
            drop(current);
            self.end_session(&session, &format!("the master {peer} disconnected ({error})"));
            if self.options.exit_with_master {
                // Give the reaper a moment to reap what was just killed.
                std::thread::sleep(Duration::from_millis(100));
                std::process::exit(0);
            }
        }
    }

    /// Kills the processes of an ended session: their bridge can no longer be
    /// reached through this node, and their lease will not be renewed.
    fn end_session(&self, session: &Session, why: &str) {
        session.alive.store(false, Ordering::SeqCst);
        let _ = session.writer.lock().shutdown(std::net::Shutdown::Both);
        let victims: Vec<i32> =
            self.processes.lock().iter().filter(|(_, p)| p.session == session.id).map(|(&pid, _)| pid).collect();
        log::info!("{why}; killing its {} processes", victims.len());
        for pid in victims {
            reaper::signal(pid, libc::SIGKILL);
        }
    }

    fn run_session(self: &Arc<Self>, session: &Arc<Session>, stream: &mut TcpStream) -> io::Result<()> {
        let (heartbeat, lease) = match read_frame(stream, MAX_FRAME)? {
            ToNode::Config { heartbeat_ms, lease_ms } => {
                (Duration::from_millis(heartbeat_ms.max(1)), Duration::from_millis(lease_ms))
            }
            other => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected Config first, got {other:?}")))
            }
        };
        session.send(&FromNode::Ready { cached: self.cached_binaries() });
        let beating = session.clone();
        std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
            let mut seq = 0;
            while beating.alive.load(Ordering::SeqCst) {
                seq += 1;
                beating.sent.lock().insert(seq, cluster::monotonic_ns());
                beating.send(&FromNode::Heartbeat { seq });
                std::thread::sleep(heartbeat);
            }
        })?;
        let mut upload: Option<(String, fs::File, PathBuf)> = None;
        loop {
            match read_frame(stream, MAX_MASTER_FRAME)? {
                ToNode::Config { .. } => {}
                ToNode::HeartbeatAck { seq } => {
                    let sent = {
                        let mut sent = session.sent.lock();
                        let at = sent.remove(&seq);
                        sent.retain(|&s, _| s > seq);
                        at
                    };
                    let Some(sent) = sent else { continue };
                    let deadline = sent + lease.as_nanos() as u64;
                    if deadline > session.deadline.load(Ordering::SeqCst) {
                        session.deadline.store(deadline, Ordering::SeqCst);
                        self.renew_leases(session.id, deadline);
                    }
                }
                ToNode::BinaryChunk { hash, len, last } => {
                    let data = crate::wire::read_chunk(stream, len)?;
                    self.receive_chunk(&mut upload, hash, &data, last)?
                }
                ToNode::Spawn { job, id, hash, image } => {
                    let answer = match self.start_process(session, job, id, &hash, image) {
                        Ok(port) => FromNode::Started { job, id, port },
                        Err(error) => {
                            log::warn!("could not start process {id} of job {job}: {error}");
                            FromNode::Failed { job, id, error: error.to_string() }
                        }
                    };
                    session.send(&answer);
                }
                ToNode::KillJob { job } => {
                    let victims: Vec<i32> =
                        self.processes.lock().iter().filter(|(_, p)| p.job == job).map(|(&pid, _)| pid).collect();
                    log::debug!("killing the {} processes of job {job}", victims.len());
                    for pid in victims {
                        reaper::signal(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    fn cached_binaries(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.options.work_dir.join("bin")) else { return Vec::new() };
        dir.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect()
    }

    fn binary_path(&self, hash: &str) -> PathBuf {
        self.options.work_dir.join("bin").join(hash)
    }

    /// Writes one chunk of a binary; checks and installs it after the last.
    fn receive_chunk(
        &self,
        upload: &mut Option<(String, fs::File, PathBuf)>,
        hash: String,
        data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{hash:?} is not a binary's hash")));
        }
        if upload.as_ref().is_none_or(|(h, _, _)| *h != hash) {
            let part = self.options.work_dir.join("bin").join(format!("{hash}.part"));
            *upload = Some((hash.clone(), fs::File::create(&part)?, part));
        }
        let (_, file, _) = upload.as_mut().expect("set above");
        file.write_all(data)?;
        if last {
            let (hash, file, part) = upload.take().expect("set above");
            drop(file);
            let bytes = fs::read(&part)?;
            let actual = crate::wire::hash_hex(&bytes);
            if actual != hash {
                let _ = fs::remove_file(&part);
                log::warn!("a binary sent as {hash} hashes to {actual}: discarded");
                return Ok(());
            }
            fs::set_permissions(&part, fs::Permissions::from_mode(0o755))?;
            fs::rename(&part, self.binary_path(&hash))?;
            log::info!("stored binary {hash} ({} bytes)", bytes.len());
        }
        Ok(())
    }

    /// Starts a process; returns the port it listens on.
    fn start_process(
        self: &Arc<Self>,
        session: &Arc<Session>,
        job: u64,
        id: u64,
        hash: &str,
        image: ProcessImage,
    ) -> io::Result<u16> {
        let binary = self.binary_path(hash);
        if !binary.exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("binary {hash} was never received")));
        }
        let listener = cluster::bind_ephemeral(self.ip)?;
        let port = listener.local_addr()?.port();
        let start = cluster::memfd_with(&image.start)?;
        let (lease_read, lease_write) = crate::os::pipe()?;
        crate::os::set_nonblocking(&lease_write)?;
        // Under the lock, so the job's last process ending cannot remove the
        // scratch directory between its making and the exec.
        let mut processes = self.processes.lock();
        let scratch = self.options.work_dir.join("jobs").join(job.to_string());
        fs::create_dir_all(&scratch)?;
        let mut command = Command::new(&binary);
        let mut args = image.args.iter().map(|a| OsStr::from_bytes(a));
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        let (name, value) = cluster::spawned_fds_var(listener.as_raw_fd(), start.as_raw_fd(), lease_read.as_raw_fd());
        command
            .args(args)
            .env_clear()
            .envs(image.vars.iter().map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))))
            .env(name, value)
            .current_dir(&scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if self.options.cpu_quota {
            command.env(cluster::CPU_QUOTA_VAR, "1");
        }
        let node = self.clone();
        let inherit = [listener.as_raw_fd(), start.as_raw_fd(), lease_read.as_raw_fd()];
        let pid = reaper::spawn(&mut command, &inherit, move |pid, ended| node.on_exit(pid, ended))?;
        let mut lease = fs::File::from(lease_write);
        let deadline = session.deadline.load(Ordering::SeqCst);
        if deadline != 0 {
            let _ = lease.write_all(&deadline.to_le_bytes());
        }
        processes.insert(pid, Process { job, id, session: session.id, lease, cgroup: image.cgroup });
        log::debug!("started process {id} of job {job} as OS pid {pid}, port {port}");
        Ok(port)
    }

    /// Called by the reaper when a monitor has ended: tell the master, remove the
    /// process's cgroup, and the job's scratch directory after its last process.
    fn on_exit(&self, pid: i32, ended: reaper::Ended) {
        let mut processes = self.processes.lock();
        let Some(process) = processes.remove(&pid) else { return };
        if !processes.values().any(|p| p.job == process.job) {
            let _ = fs::remove_dir_all(self.options.work_dir.join("jobs").join(process.job.to_string()));
        }
        drop(processes);
        cluster::remove_cgroup(&process.cgroup);
        log::debug!("process {} of job {} ended: {ended:?}", process.id, process.job);
        let current = self.current.lock().clone();
        if let Some(session) = current.filter(|s| s.id == process.session) {
            session.send(&FromNode::Ended { job: process.job, id: process.id, code: ended.code, signal: ended.signal });
        }
    }

    /// Writes the new lease deadline to every monitor of session `session`.
    fn renew_leases(&self, session: u64, deadline: u64) {
        for process in self.processes.lock().values_mut().filter(|p| p.session == session) {
            let _ = process.lease.write_all(&deadline.to_le_bytes());
        }
    }
}
