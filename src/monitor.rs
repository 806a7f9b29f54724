//! The monitor: the parent of each user process. It forwards the process's output
//! to the bridge, waits for it to end, and reports how it ended (with its panic
//! message) after a bounded drain of the output pipes. It kills the process when
//! the bridge is lost, and ignores SIGINT: stopping a job is the bridge's decision.
//!
//! On a cluster it also holds its node's lease: the node daemon writes each new
//! lease deadline to a pipe, and the monitor kills its process when the deadline
//! passes unrenewed or the daemon is gone, so a stalled or cut-off node fences its
//! own processes.

use crate::{
    codec,
    proto::{Command, Heartbeats, Report, KIND_MESSAGE},
    sys::{self, OsPid, WaitStatus},
    ExitStatus, Resources,
};
use std::{
    io::Write,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    time::{Duration, Instant},
};

/// How long output is still read after the process ended (a grandchild may hold
/// the pipes open).
const DRAIN: Duration = Duration::from_millis(500);
/// How long after the start a monitor lets go of the memory it inherited and
/// does not use (see [`sys::release_file_pages`]): once its process is under
/// way, off the spawn's path, and after its own start-up code has run.
const SETTLE: Duration = Duration::from_millis(100);

/// The most output read at once (a pipe holds 64 KiB).
const OUTPUT_READ: usize = 64 * 1024;

/// What the monitor watches.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) child: OsPid,
    /// The connection to the bridge: a Unix socket on one machine, TCP on a cluster.
    pub(crate) bridge: UnixStream,
    /// On a cluster: the pipe the node daemon writes lease deadlines to, as
    /// little-endian `u64` nanoseconds of the monotonic clock.
    pub(crate) lease: Option<OwnedFd>,
    /// On a cluster, for the top process: the write end of its stdin, fed by
    /// `Command::Stdin`.
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    pub(crate) panic: OwnedFd,
    pub(crate) resources: Resources,
    /// The process's cgroup, removed once it has ended.
    pub(crate) cgroup: String,
    /// Whether to leave the cgroup, if it is fit for it, to the bridge to reuse
    /// (on one machine, where the bridge made it) instead of removing it.
    pub(crate) recycle_cgroup: bool,
    /// On a cluster: the heartbeats exchanged with the bridge.
    pub(crate) heartbeats: Option<Heartbeats>,
}

struct Stream {
    fd: OwnedFd,
    /// 1 or 2 for output; 0 for the panic pipe.
    number: u8,
    open: bool,
}

/// Runs the monitor until its process has ended and been reported; never returns.
pub(crate) fn run(setup: Setup) -> ! {
    let Setup { child, mut bridge, lease, stdin, stdout, stderr, panic, resources, cgroup, recycle_cgroup, heartbeats } =
        setup;
    // When the bridge was last heard from, and when this monitor last said it is alive.
    let mut heard = Instant::now();
    let mut beat = Instant::now();
    let mut stdin = stdin.map(|fd| StdinFeed { fd, pending: Vec::new(), ended: false });
    let mut lease = lease.map(|fd| Lease { fd, deadline: None, partial: Vec::new() });
    let pidfd = match sys::pidfd_open(child) {
        Ok(fd) => fd,
        Err(_) => {
            let _ = sys::kill(child, libc::SIGKILL);
            sys::exit_now(1)
        }
    };
    let mut streams = [
        Stream { fd: stdout, number: 1, open: true },
        Stream { fd: stderr, number: 2, open: true },
        Stream { fd: panic, number: 0, open: true },
    ];
    let mut panic_message = Vec::new();
    // Filled by reads only: its pages count in the monitor's memory once output
    // has reached them, not before.
    let mut buf = Vec::with_capacity(OUTPUT_READ);
    let mut ended: Option<(WaitStatus, Instant)> = None;
    let mut commands = Vec::new();
    // How the process is reported if the bridge had it killed or shut down.
    let mut imposed: Option<ExitStatus> = None;
    let mut kill_at: Option<Instant> = None;
    let mut settle_at = Some(Instant::now() + SETTLE);
    loop {
        if settle_at.is_some_and(|at| at <= Instant::now()) {
            settle_at = None;
            sys::release_file_pages();
        }
        if kill_at.is_some_and(|at| at <= Instant::now()) && ended.is_none() {
            let _ = sys::kill(child, libc::SIGKILL);
            kill_at = None;
        }
        if let Some(heartbeats) = heartbeats {
            if beat.elapsed() >= heartbeats.interval {
                beat = Instant::now();
                send(&mut bridge, &Report::Heartbeat, child, &cgroup);
            }
            if ended.is_none() && heard.elapsed() >= heartbeats.fence {
                // The bridge is silent: it may already count this process as lost.
                imposed = Some(ExitStatus::Lost);
                let _ = sys::kill(child, libc::SIGKILL);
                heard = Instant::now();
            }
        }
        if ended.is_none() && lease.as_ref().is_some_and(Lease::expired) {
            // Fenced: the node could not renew its lease, so the master may already
            // count this process as lost and start another in its place.
            imposed = Some(ExitStatus::Lost);
            let _ = sys::kill(child, libc::SIGKILL);
            lease = None;
        }
        let timeout = match ended {
            Some((_, at)) => {
                let left = DRAIN.saturating_sub(at.elapsed());
                if left.is_zero() || streams.iter().all(|s| !s.open) {
                    break;
                }
                Some(left)
            }
            None => {
                let heartbeat_left = heartbeats
                    .map(|h| h.interval.saturating_sub(beat.elapsed()).min(h.fence.saturating_sub(heard.elapsed())));
                [
                    kill_at.map(|at| at.saturating_duration_since(Instant::now())),
                    settle_at.map(|at| at.saturating_duration_since(Instant::now())),
                    lease.as_ref().and_then(Lease::left),
                    heartbeat_left,
                ]
                .into_iter()
                .flatten()
                .min()
            }
        };
        let [out_fd, err_fd, panic_fd] = streams.each_ref().map(|s| if s.open { s.fd.as_raw_fd() } else { -1 });
        let feeding = stdin.as_ref().filter(|s| !s.pending.is_empty());
        let fds = [
            (out_fd, libc::POLLIN),
            (err_fd, libc::POLLIN),
            (panic_fd, libc::POLLIN),
            (bridge.as_raw_fd(), libc::POLLIN),
            (if ended.is_none() { pidfd.as_raw_fd() } else { -1 }, libc::POLLIN),
            (lease.as_ref().map_or(-1, |l| l.fd.as_raw_fd()), libc::POLLIN),
            (feeding.map_or(-1, |s| s.fd.as_raw_fd()), libc::POLLOUT),
        ];
        let ready = match sys::poll(fds, timeout) {
            Ok(ready) => ready,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        for (stream, revents) in streams.iter_mut().zip(&ready) {
            if !stream.open || *revents == 0 {
                continue;
            }
            buf.clear();
            match sys::read_spare(stream.fd.as_raw_fd(), &mut buf, OUTPUT_READ) {
                Ok(0) | Err(_) => {
                    stream.open = false;
                    if stream.number != 0 {
                        send(&mut bridge, &Report::Output { fd: stream.number, data: Vec::new() }, child, &cgroup);
                    }
                }
                Ok(n) if stream.number == 0 => panic_message.extend_from_slice(&buf[..n]),
                Ok(n) => {
                    send(&mut bridge, &Report::Output { fd: stream.number, data: buf[..n].to_vec() }, child, &cgroup)
                }
            }
        }
        if ready[3] != 0 {
            if let Ok(0) | Err(_) = sys::read_spare(bridge.as_raw_fd(), &mut commands, 4096) {
                // Without a bridge nobody can see the process: nothing outlives its job.
                end_unreported(child, &cgroup);
            }
            heard = Instant::now();
            let mut pos = 0;
            while let Ok(Some(frame)) = codec::next_frame(&commands[pos..]) {
                let command = codec::decode::<Command>(&commands[pos..][frame.payload]);
                pos += frame.len;
                match command {
                    Ok(Command::Kill { status }) => {
                        imposed = Some(status);
                        let _ = sys::kill(child, libc::SIGKILL);
                    }
                    Ok(Command::Terminate { timeout, status }) => {
                        imposed = Some(status);
                        let _ = sys::kill(child, libc::SIGTERM);
                        kill_at = timeout.map(|t| Instant::now() + t);
                    }
                    Ok(Command::Heartbeat) => {}
                    Ok(Command::Stdin { data }) => {
                        if let Some(feed) = &mut stdin {
                            feed.ended |= data.is_empty();
                            feed.pending.extend_from_slice(&data);
                        }
                    }
                    // A corrupt command cannot be trusted to mean anything.
                    Err(_) => {}
                }
            }
            commands.drain(..pos);
        }
        if let Some(feed) = &mut stdin {
            if ready[6] != 0 && !feed.pending.is_empty() {
                match sys::write(feed.fd.as_raw_fd(), &feed.pending) {
                    Ok(n) => drop(feed.pending.drain(..n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // The process closed its stdin: what is left has no reader.
                    Err(_) => feed.pending.clear(),
                }
            }
            if feed.ended && feed.pending.is_empty() {
                stdin = None;
            }
        }
        if ready[5] != 0 {
            if let Some(held) = &mut lease {
                if !held.read() {
                    if ended.is_none() {
                        // The node daemon is gone. A monitor forked by the daemon
                        // died with it; one forked by the job's zygote outlives it
                        // for as long as the zygote takes to die. Either way the
                        // process ends unreported: the master declares it lost once
                        // the lease has run out, and not before may a supervisor
                        // start its replacement (see the guide's guarantees).
                        end_unreported(child, &cgroup);
                    }
                    lease = None;
                }
            }
        }
        if ready[4] != 0 && ended.is_none() {
            if let Ok(Some(status)) = sys::waitpid(child, false) {
                ended = Some((status, Instant::now()));
            }
        }
    }
    let (status, _) = ended.expect("the loop ends only after the process has");
    let first_panic = panic_message.split(|&b| b == 0).next().filter(|m| !m.is_empty());
    let status = exit_status(status, first_panic.map(|m| String::from_utf8_lossy(m).into_owned()), &cgroup, &resources);
    // A process the bridge had killed or shut down is reported as such, unless it
    // panicked first.
    let status = match (imposed, status) {
        (_, panicked @ ExitStatus::Panicked(_)) => panicked,
        (Some(imposed), _) => imposed,
        (None, status) => status,
    };
    send(&mut bridge, &Report::Exited { status }, child, &cgroup);
    // The report woke the bridge, often onto this CPU: let it pass on the news
    // (a supervisor's restart, a parent's next spawn) before the cgroup check.
    sys::yield_now();
    // After the report, so the process's end is not held up by it.
    if recycle_cgroup && sys::cgroup_reusable(&cgroup) {
        send(&mut bridge, &Report::CgroupFree, child, &cgroup);
    } else {
        sys::remove_cgroups(&cgroup);
    }
    // Let what the bridge set off run first, and this monitor's exit, which
    // unmaps a whole process image, come after. (Not before the cgroup is
    // offered back, at this process's own priority: a fan-out spawns into
    // freed cgroups.)
    sys::step_aside();
    sys::exit_now(0)
}

/// What is still to be written to the process's stdin.
struct StdinFeed {
    fd: OwnedFd,
    pending: Vec<u8>,
    /// Whether the input has ended (the pipe closes once `pending` is written).
    ended: bool,
}

/// The node's lease, as this monitor holds it.
struct Lease {
    fd: OwnedFd,
    /// Monotonic nanoseconds; `None` until the daemon sends the first deadline.
    deadline: Option<u64>,
    partial: Vec<u8>,
}

impl Lease {
    /// Reads the deadlines sent; false when the daemon has closed the pipe.
    fn read(&mut self) -> bool {
        let mut buf = [0u8; 512];
        match sys::read(self.fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.partial.extend_from_slice(&buf[..n]);
                let whole = self.partial.len() / 8 * 8;
                if let Some(last) = self.partial[..whole].chunks_exact(8).last() {
                    self.deadline = Some(u64::from_le_bytes(last.try_into().expect("chunks of eight")));
                }
                self.partial.drain(..whole);
                true
            }
        }
    }

    fn left(&self) -> Option<Duration> {
        self.deadline.map(|deadline| Duration::from_nanos(deadline.saturating_sub(sys::monotonic_ns())))
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|deadline| sys::monotonic_ns() >= deadline)
    }
}

fn exit_status(status: WaitStatus, panic: Option<String>, cgroup: &str, resources: &Resources) -> ExitStatus {
    match (status, panic) {
        (WaitStatus::Exited(0), _) => ExitStatus::Success,
        (WaitStatus::Exited(_) | WaitStatus::Signaled(_), Some(message)) => ExitStatus::Panicked(message),
        (WaitStatus::Exited(code), None) => ExitStatus::Code(code),
        (WaitStatus::Signaled(libc::SIGKILL), None) if sys::memory_exceeded(cgroup) => {
            ExitStatus::MemoryExceeded(resources.mem)
        }
        (WaitStatus::Signaled(signal), None) => ExitStatus::Signal(signal),
    }
}

fn send(bridge: &mut UnixStream, report: &Report, child: OsPid, cgroup: &str) {
    let mut frame = Vec::new();
    if codec::append_frame(&mut frame, KIND_MESSAGE, report).is_err() || bridge.write_all(&frame).is_err() {
        end_unreported(child, cgroup);
    }
}

/// Ends the process, and this monitor with it, without a report: when there is
/// no bridge to report to, or its node's daemon is gone.
fn end_unreported(child: OsPid, cgroup: &str) -> ! {
    let _ = sys::kill(child, libc::SIGKILL);
    let _ = sys::waitpid(child, true);
    sys::remove_cgroups(cgroup);
    sys::exit_now(1)
}

#[cfg(test)]
mod tests {
    //! A monitor runs in a process of its own: this test binary, run again with
    //! only [`monitor_of_a_sleeping_child`] (ignored otherwise), given the fds
    //! of its lease pipe and bridge socket.

    use super::*;
    use std::{
        io::{BufRead, BufReader, Read},
        os::{fd::FromRawFd, unix::process::CommandExt},
        process::{Command, Stdio},
    };

    /// Where [`monitor_of_a_sleeping_child`] finds its fds: `LEASE,BRIDGE`.
    const FDS: &str = "CONSTELLATION_TEST_MONITOR_FDS";

    #[test]
    #[ignore = "the monitor the tests below run, in a process of its own"]
    fn monitor_of_a_sleeping_child() {
        let Some(fds) = std::env::var(FDS).ok() else { return };
        let (lease, bridge) = fds.split_once(',').expect("LEASE,BRIDGE");
        let (lease, bridge): (i32, i32) = (lease.parse().unwrap(), bridge.parse().unwrap());
        // Reaped by the monitor, which never returns.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new("sleep").arg("60").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (panic, _panic_write) = sys::pipe().unwrap();
        println!("child {}", child.id());
        std::io::stdout().flush().unwrap();
        run(Setup {
            child: OsPid(child.id() as i32),
            // SAFETY: the test that started this process passed these fds to it
            // alone.
            bridge: unsafe { UnixStream::from_raw_fd(bridge) },
            // SAFETY: as above.
            lease: Some(unsafe { OwnedFd::from_raw_fd(lease) }),
            stdin: None,
            stdout: child.stdout.take().unwrap().into(),
            stderr: child.stderr.take().unwrap().into(),
            panic,
            resources: Resources::default(),
            cgroup: format!("constellation-monitor-test-{}", std::process::id()),
            recycle_cgroup: false,
            heartbeats: None,
        })
    }

    #[test]
    fn a_monitor_whose_node_daemon_is_gone_kills_its_process_and_reports_nothing() {
        // This test is the node daemon: it holds the lease pipe's write end.
        let (lease_read, lease_write) = sys::pipe().unwrap();
        let (mut bridge, bridge_there) = UnixStream::pair().unwrap();
        let fds = (lease_read.as_raw_fd(), bridge_there.as_raw_fd());
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "monitor::tests::monitor_of_a_sleeping_child", "--ignored", "--nocapture"])
            .env(FDS, format!("{},{}", fds.0, fds.1))
            .stdout(Stdio::piped());
        // SAFETY: clearing close-on-exec is async-signal-safe.
        unsafe { command.pre_exec(move || sys::clear_cloexec(fds.0).and_then(|()| sys::clear_cloexec(fds.1))) };
        let mut monitor = command.spawn().unwrap();
        drop((lease_read, bridge_there));
        let line = BufReader::new(monitor.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("child "))
            .expect("the monitor's process says its child's pid");
        let child: i32 = line["child ".len()..].parse().unwrap();
        let deadline = sys::monotonic_ns() + 60_000_000_000;
        sys::write(lease_write.as_raw_fd(), &deadline.to_le_bytes()).unwrap();
        // The daemon is gone.
        drop(lease_write);

        bridge.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut said = Vec::new();
        bridge.read_to_end(&mut said).expect("the monitor ends within 10 s");
        let mut reports = Vec::new();
        let mut rest = &said[..];
        while let Ok(Some(frame)) = codec::next_frame(rest) {
            reports.push(codec::decode::<Report>(&rest[frame.payload.clone()]).unwrap());
            rest = &rest[frame.len..];
        }
        assert!(
            !reports.iter().any(|report| matches!(report, Report::Exited { .. })),
            "the process was reported before the master declared it lost: {reports:?}"
        );
        assert!(monitor.wait().is_ok());
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            sys::kill(OsPid(child), 0).is_err()
        });
        assert!(gone, "the monitor's process {child} outlived it");
    }
}
