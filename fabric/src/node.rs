//! The node role: accepts its master (and nobody else), caches the binaries it
//! is sent by their hash, starts processes with the fds a deployed process
//! starts from, reports how each ended, and holds the node's lease: it sends
//! heartbeats, and each one the master acknowledges extends the lease from when
//! it was sent. Every process's monitor is told each new deadline and kills its
//! process when the deadline passes unrenewed.
//!
//! A job's first process here also starts the job's zygote: the binary exec'd
//! once, which forks each later process of the same arguments and environment
//! (skipping the exec and the dynamic loader, as a local spawn does) and reports
//! each one's end. Processes it cannot serve are exec'd as the node's own
//! children. The zygote lives until its job is killed or its master goes.

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
        fd::{AsRawFd, OwnedFd, RawFd},
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
    started: Started,
}

/// How a process was started, which says how to kill it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Started {
    /// Exec'd as this daemon's child with this OS pid.
    Exec(i32),
    /// Forked by the zygote of this number, and killed with it.
    Forked(u64),
}

/// A job's zygote: a process of the job's binary, this daemon's child, that
/// forks the job's processes of its arguments and environment.
struct Zygote {
    session: u64,
    job: u64,
    hash: String,
    args: Vec<Vec<u8>>,
    vars: Vec<(Vec<u8>, Vec<u8>)>,
    os_pid: i32,
    /// This daemon's end of the zygote's socket: orders out, reports in.
    socket: OwnedFd,
}

impl Zygote {
    /// Whether a process forked from it is the one `image` of `hash` asks for.
    fn serves(&self, hash: &str, image: &ProcessImage) -> bool {
        self.hash == hash && self.args == image.args && self.vars == image.vars
    }
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
    /// Live processes by their number on this node.
    processes: Mutex<HashMap<u64, Process>>,
    /// Live zygotes by their number on this node. Locked after `processes`
    /// when both are.
    zygotes: Mutex<HashMap<u64, Zygote>>,
    /// The next number of a process or a zygote.
    next_number: AtomicU64,
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
        zygotes: Mutex::new(HashMap::new()),
        next_number: AtomicU64::new(1),
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
        let killed = self.kill(|p_session, _| p_session == session.id);
        log::info!("{why}; killed its {killed} processes");
    }

    /// Kills the processes and zygotes whose (session, job) `which` picks;
    /// returns how many processes that was.
    fn kill(&self, which: impl Fn(u64, u64) -> bool) -> usize {
        let processes = self.processes.lock();
        let victims: Vec<&Process> = processes.values().filter(|p| which(p.session, p.job)).collect();
        for process in &victims {
            if let Started::Exec(os_pid) = process.started {
                reaper::signal(os_pid, libc::SIGKILL);
            }
        }
        // The processes a zygote forked die with it; its reports' end tells
        // this daemon so.
        for zygote in self.zygotes.lock().values().filter(|z| which(z.session, z.job)) {
            reaper::signal(zygote.os_pid, libc::SIGKILL);
        }
        victims.len()
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
                    let killed = self.kill(|_, p_job| p_job == job);
                    log::debug!("killed the {killed} processes of job {job}");
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
        let fds = [listener.as_raw_fd(), start.as_raw_fd(), lease_read.as_raw_fd()];
        // Under the lock, so the job's last process ending cannot remove the
        // scratch directory between its making and the start.
        let mut processes = self.processes.lock();
        let scratch = self.options.work_dir.join("jobs").join(job.to_string());
        fs::create_dir_all(&scratch)?;
        let number = self.next_number.fetch_add(1, Ordering::SeqCst);
        let started = match self.fork_from_zygote(session.id, job, hash, &image, &scratch, number, fds) {
            Some(zygote) => Started::Forked(zygote),
            None => {
                let mut command = self.program(&binary, &image, &scratch);
                let (name, value) = cluster::spawned_fds_var(fds[0], fds[1], fds[2]);
                command.env(name, value);
                let node = self.clone();
                Started::Exec(reaper::spawn(&mut command, &fds, move |_, ended| node.process_ended(number, ended))?)
            }
        };
        let mut lease = fs::File::from(lease_write);
        let deadline = session.deadline.load(Ordering::SeqCst);
        if deadline != 0 {
            let _ = lease.write_all(&deadline.to_le_bytes());
        }
        processes.insert(number, Process { job, id, session: session.id, lease, cgroup: image.cgroup, started });
        log::debug!("started process {id} of job {job} (number {number}), port {port}");
        Ok(port)
    }

    /// The command that runs `binary` as `image` says, in `scratch`.
    fn program(&self, binary: &std::path::Path, image: &ProcessImage, scratch: &std::path::Path) -> Command {
        let mut command = Command::new(binary);
        let mut args = image.args.iter().map(|a| OsStr::from_bytes(a));
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        command
            .args(args)
            .env_clear()
            .envs(image.vars.iter().map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))))
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if self.options.cpu_quota {
            command.env(cluster::CPU_QUOTA_VAR, "1");
        }
        command
    }

    /// Orders process `number` from the job's zygote, starting the zygote if the
    /// job has none; returns the zygote's number, or `None` if the process is to
    /// be exec'd: the job's zygote runs other arguments or environment, is gone,
    /// or could not be started.
    #[allow(clippy::too_many_arguments)]
    fn fork_from_zygote(
        self: &Arc<Self>,
        session: u64,
        job: u64,
        hash: &str,
        image: &ProcessImage,
        scratch: &std::path::Path,
        number: u64,
        fds: [RawFd; 3],
    ) -> Option<u64> {
        let mut zygotes = self.zygotes.lock();
        let existing = zygotes.iter().find(|(_, z)| z.session == session && z.job == job).map(|(&n, _)| n);
        let zygote_number = match existing {
            Some(zygote_number) => zygote_number,
            None => {
                let zygote_number = self.next_number.fetch_add(1, Ordering::SeqCst);
                let zygote = self
                    .start_zygote(zygote_number, session, job, hash, image, scratch)
                    .map_err(|error| log::warn!("starting a zygote for job {job}: {error}"))
                    .ok()?;
                zygotes.insert(zygote_number, zygote);
                zygote_number
            }
        };
        let zygote = zygotes.get(&zygote_number).filter(|z| z.serves(hash, image))?;
        cluster::order_fork(zygote.socket.as_raw_fd(), number, fds).ok()?;
        Some(zygote_number)
    }

    /// Execs the job's zygote with `image`'s arguments and environment, and
    /// starts the thread that reads its reports (which waits for the caller's
    /// locks before acting on them).
    fn start_zygote(
        self: &Arc<Self>,
        number: u64,
        session: u64,
        job: u64,
        hash: &str,
        image: &ProcessImage,
        scratch: &std::path::Path,
    ) -> io::Result<Zygote> {
        let (socket, theirs) = cluster::zygote_socket_pair()?;
        let reader = socket.try_clone()?;
        let mut command = self.program(&self.binary_path(hash), image, scratch);
        let (name, value) = cluster::zygote_fds_var(theirs.as_raw_fd());
        command.env(name, value);
        let os_pid = reaper::spawn(&mut command, &[theirs.as_raw_fd()], move |os_pid, ended| {
            log::debug!("the zygote of job {job} (OS pid {os_pid}) ended: {ended:?}");
        })?;
        let node = self.clone();
        if let Err(error) =
            std::thread::Builder::new().name("zygote".into()).spawn(move || node.read_zygote_reports(number, reader))
        {
            reaper::signal(os_pid, libc::SIGKILL);
            return Err(error);
        }
        log::debug!("started a zygote for job {job} as OS pid {os_pid}");
        Ok(Zygote {
            session,
            job,
            hash: hash.to_string(),
            args: image.args.clone(),
            vars: image.vars.clone(),
            os_pid,
            socket,
        })
    }

    /// Passes on the ends a zygote reports until it has gone; then the processes
    /// it forked that had not ended are gone with it, killed.
    fn read_zygote_reports(&self, zygote: u64, socket: OwnedFd) {
        loop {
            match cluster::read_fork_report(socket.as_raw_fd()) {
                Ok(Some(report)) => {
                    self.process_ended(report.tag, reaper::Ended { code: report.code, signal: report.signal })
                }
                // A zygote killed with orders unread resets the connection.
                Ok(None) => break,
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => break,
                Err(error) => {
                    log::warn!("reading the reports of a zygote: {error}");
                    break;
                }
            }
        }
        let processes = self.processes.lock();
        let Some(gone) = self.zygotes.lock().remove(&zygote) else { return };
        let orphans: Vec<u64> =
            processes.iter().filter(|(_, p)| p.started == Started::Forked(zygote)).map(|(&n, _)| n).collect();
        drop(processes);
        log::debug!("the zygote of job {} has gone, and with it {} processes", gone.job, orphans.len());
        for number in orphans {
            self.process_ended(number, reaper::Ended { code: None, signal: Some(libc::SIGKILL) });
        }
        self.remove_scratch_if_unused(&self.processes.lock(), gone.job);
    }

    /// Called when the monitor of process `number` has ended (the reaper or
    /// its zygote says so): tell the master, remove the process's cgroup, and
    /// the job's scratch directory after its last process.
    fn process_ended(&self, number: u64, ended: reaper::Ended) {
        let mut processes = self.processes.lock();
        let Some(process) = processes.remove(&number) else { return };
        self.remove_scratch_if_unused(&processes, process.job);
        drop(processes);
        cluster::remove_cgroup(&process.cgroup);
        log::debug!("process {} of job {} ended: {ended:?}", process.id, process.job);
        let current = self.current.lock().clone();
        if let Some(session) = current.filter(|s| s.id == process.session) {
            session.send(&FromNode::Ended { job: process.job, id: process.id, code: ended.code, signal: ended.signal });
        }
    }

    /// Removes the scratch directory of `job` if neither a process (of
    /// `processes`, the locked table) nor a zygote of the job is left.
    fn remove_scratch_if_unused(&self, processes: &HashMap<u64, Process>, job: u64) {
        if !processes.values().any(|p| p.job == job) && !self.zygotes.lock().values().any(|z| z.job == job) {
            let _ = fs::remove_dir_all(self.options.work_dir.join("jobs").join(job.to_string()));
        }
    }

    /// Writes the new lease deadline to every monitor of session `session`.
    fn renew_leases(&self, session: u64, deadline: u64) {
        for process in self.processes.lock().values_mut().filter(|p| p.session == session) {
            let _ = process.lease.write_all(&deadline.to_le_bytes());
        }
    }
}
