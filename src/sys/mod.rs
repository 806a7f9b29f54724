//! Every operating-system call the crate makes: fork, exec set-up, pipes, waiting,
//! signals, resource limits, cgroups and socket queries.
//!
//! Contract: the rest of the crate never calls `libc` directly. Functions here
//! return `io::Result` built from `errno` by [`cvt`]; OS process ids and fds are
//! typed ([`OsPid`], `OwnedFd`). Functions marked async-signal-safe allocate
//! nothing and take no lock, so they may run between `fork` and `exec`.

mod cgroup;
mod fd_passing;

pub(crate) use cgroup::{
    enter_limits, find_parents as find_cgroup_parents, memory_exceeded, prepare as prepare_cgroup,
    remove as remove_cgroups, remove_job as remove_job_cgroups, reusable as cgroup_reusable,
    sweep_stale as sweep_stale_cgroups,
};

pub(crate) use fd_passing::{recv_fds, send_fds, seqpacket_pair};

use std::{
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// An operating-system process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OsPid(pub(crate) libc::pid_t);

/// Turns a `-1` return into the `errno` error.
pub(crate) fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Fork {
    Parent(OsPid),
    Child,
}

/// Forks the process.
///
/// # Safety
/// The process must have one thread, so the child inherits no lock held by a
/// thread that no longer exists.
pub(crate) unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: the caller guarantees the process is single-threaded.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(OsPid(pid))),
    }
}

/// The number of threads of this process.
pub(crate) fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map(|dir| dir.count()).unwrap_or(1)
}

/// This process's id.
pub(crate) fn getpid() -> OsPid {
    // SAFETY: getpid cannot fail.
    OsPid(unsafe { libc::getpid() })
}

/// Drops this process's page-table entries for the pages of its program and
/// libraries that it holds only as the file holds them (code and constant data,
/// never written): they stay in the page cache, and the few the process still
/// uses fault back in. A monitor, forked from a process that ran the program's
/// start-up, otherwise counts all of them in its RSS. A read-only mapping any of
/// whose pages is the process's own (such as data relocated in place) and every
/// writable mapping are left alone: dropping them would lose their contents.
pub(crate) fn release_file_pages() {
    // The ranges are found first and released last, with nothing but the calls to
    // madvise in between: code run after a range's release faults back in.
    let mut ranges = [(0usize, 0usize); 64];
    let mut count = 0;
    {
        let Ok(maps) = fs::read_to_string("/proc/self/maps") else { return };
        let Ok(pagemap) = fs::File::open("/proc/self/pagemap") else { return };
        // SAFETY: sysconf takes a plain integer.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mut entries = Vec::new();
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
            let path = fields.nth(3).unwrap_or("");
            if !perms.starts_with("r-") || !perms.ends_with('p') || !path.starts_with('/') || count == ranges.len() {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            // Each page's pagemap entry: bit 63 present, bit 61 a file page.
            entries.resize((end - start) / page * 8, 0);
            use std::os::unix::fs::FileExt;
            if pagemap.read_exact_at(&mut entries, (start / page * 8) as u64).is_err() {
                continue;
            }
            let own_page = entries.chunks_exact(8).any(|e| {
                let e = u64::from_le_bytes(e.try_into().expect("chunks of eight"));
                e & (1 << 63) != 0 && e & (1 << 61) == 0
            });
            if !own_page {
                ranges[count] = (start, end - start);
                count += 1;
            }
        }
    }
    trim_heap();
    for &(start, len) in &ranges[..count] {
        // SAFETY: the range is one of this process's read-only private file
        // mappings, none of whose pages is its own (pagemap says each present page
        // is the file's); MADV_DONTNEED only drops page-table entries, and later
        // accesses read the same bytes back from the file.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    }
}

/// Returns the free memory at the top of the heap and in its free chunks to
/// the system (a monitor, forked from a process, inherits heap pages it never
/// uses again).
fn trim_heap() {
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe { libc::malloc_trim(0) };
}

/// This process's parent's id.
pub(crate) fn getppid() -> OsPid {
    // SAFETY: getppid cannot fail.
    OsPid(unsafe { libc::getppid() })
}

/// Nanoseconds on the machine-wide monotonic clock (the same in every process).
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: now is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec anonymous file holding `bytes`, positioned at its start.
pub(crate) fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    let name = c"constellation-spawn";
    // SAFETY: name is a valid C string.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = fs::File::from(fd);
    io::Write::write_all(&mut file, bytes)?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
    Ok(file.into())
}

/// Clears close-on-exec on `fd`. Async-signal-safe.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on any fd number is memory-safe.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// Makes `dst` a copy of `src` (not close-on-exec). Async-signal-safe.
pub(crate) fn dup2(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on any fd numbers is memory-safe; dst is replaced deliberately.
    cvt(unsafe { libc::dup2(src, dst) }).map(drop)
}

/// Asks the kernel to send `signal` to this process when its parent dies, and
/// reports whether the parent is already gone (it is then `init` or a subreaper).
pub(crate) fn die_with_parent(signal: i32, expected_parent: OsPid) -> io::Result<bool> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
    // SAFETY: getppid cannot fail.
    Ok(unsafe { libc::getppid() } != expected_parent.0)
}

/// Ignores `signal` in this process (and its children until they exec).
pub(crate) fn ignore_signal(signal: i32) {
    // SAFETY: SIG_IGN is a valid disposition for catchable signals.
    unsafe { libc::signal(signal, libc::SIG_IGN) };
}

/// Changes what the epoll set `epoll` reports for socket `fd` (registered
/// edge-triggered by mio under `token`): the peer's close always, input when
/// `input`, room to write when `output`. Re-enabling either reports what is
/// there already at once.
pub(crate) fn epoll_listen(epoll: RawFd, fd: RawFd, token: usize, input: bool, output: bool) -> io::Result<()> {
    let mut events = libc::EPOLLET | libc::EPOLLRDHUP;
    if input {
        events |= libc::EPOLLIN;
    }
    if output {
        events |= libc::EPOLLOUT;
    }
    let mut event = libc::epoll_event { events: events as u32, u64: token as u64 };
    // SAFETY: event is a valid epoll_event for the call; both fds are plain ints.
    cvt(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut event) }).map(drop)
}

/// Whether the peer of socket `fd` has closed its end (or the connection
/// failed), without waiting.
pub(crate) fn peer_closed(fd: RawFd) -> bool {
    let mut entry = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: entry is one valid pollfd for the call.
    let ready = unsafe { libc::poll(&mut entry, 1, 0) };
    ready > 0 && entry.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes to a socket by its fd, without owning it: for a thread that holds the
/// lock under which the fd is known to be open.
pub(crate) struct SocketWriter(pub(crate) RawFd);

impl io::Write for SocketWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(bytes)])
    }

    fn write_vectored(&mut self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: an all-zero msghdr is valid; IoSlice is ABI-compatible with
        // iovec, and the slices outlive the call.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = slices.as_ptr() as *mut libc::iovec;
        header.msg_iovlen = slices.len().min(libc::UIO_MAXIOV as usize);
        // SAFETY: header points at valid iovecs for the call.
        cvt(unsafe { libc::sendmsg(self.0, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }).map(|n| n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes written to `fd` and not yet read, if `fd` is a pipe; 0 otherwise.
pub(crate) fn unread_in_pipe(fd: RawFd) -> usize {
    // SAFETY: an all-zero stat is valid to be overwritten by fstat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: stat is a valid buffer for the call.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return 0;
    }
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to `unread`.
    match unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } {
        0 => unread.max(0) as usize,
        _ => 0,
    }
}

/// Gives `signal` its default disposition back in this process.
pub(crate) fn default_signal(signal: i32) {
    // SAFETY: SIG_DFL is a valid disposition for any signal.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// Sends `signal` to a process.
pub(crate) fn kill(pid: OsPid, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    cvt(unsafe { libc::kill(pid.0, signal) }).map(drop)
}

/// Sends `signal` to every process of a process group.
pub(crate) fn kill_group(pgid: OsPid, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; a negative pid names the group.
    cvt(unsafe { libc::kill(-pgid.0, signal) }).map(drop)
}

/// Makes this process the leader of a new process group.
pub(crate) fn new_process_group() -> io::Result<()> {
    // SAFETY: setpgid takes plain integers.
    cvt(unsafe { libc::setpgid(0, 0) }).map(drop)
}

/// A pollable fd that becomes readable when process `pid` (a child) exits.
pub(crate) fn pidfd_open(pid: OsPid) -> io::Result<OwnedFd> {
    // SAFETY: the pidfd_open syscall takes plain integers and returns a new fd.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.0, 0) })?;
    // SAFETY: the syscall returned a new fd that nothing else owns; it is not
    // close-on-exec by flag, so set that.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: fcntl on an owned fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(fd)
}

/// How a child ended, as `waitpid` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

fn decode_wait(status: libc::c_int) -> Option<WaitStatus> {
    if libc::WIFEXITED(status) {
        Some(WaitStatus::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(WaitStatus::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// Waits for the child `pid` to end; with `block` false, returns `None` if it has not.
pub(crate) fn waitpid(pid: OsPid, block: bool) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: status is a valid int to write to.
        match cvt(unsafe { libc::waitpid(pid.0, &mut status, flags) }) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(decode_wait(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reaps any one ended child without blocking.
pub(crate) fn reap_any() -> Option<(OsPid, Option<WaitStatus>)> {
    let mut status = 0;
    // SAFETY: status is a valid int to write to.
    match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
        pid if pid > 0 => Some((OsPid(pid), decode_wait(status))),
        _ => None,
    }
}

/// Asks for a send buffer of `bytes` on a socket (the kernel caps it at
/// `net.core.wmem_max`).
pub(crate) fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: SO_SNDBUF reads one int from the pointer, valid for its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Bytes written to a socket that the kernel has not yet sent (`SIOCOUTQNSD`).
///
/// Not `TIOCOUTQ`, which also counts bytes sent and not yet acknowledged: a
/// peer that only receives acknowledges late (delayed ACK, up to 40 ms), and
/// bytes already sent are delivered after the socket is closed.
pub(crate) fn unsent_bytes(fd: RawFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one int.
    cvt(unsafe { libc::ioctl(fd, libc::SIOCOUTQNSD, &mut queued) })?;
    Ok(queued.max(0) as usize)
}

/// Raises the soft open-files limit to the hard limit.
pub(crate) fn raise_fd_limit() -> io::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: limit is a valid rlimit to write to.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: limit is a valid rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }).map(drop)
}

/// Limits the process's data segment (heap and private mappings) to `bytes`.
pub(crate) fn limit_data(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
    // SAFETY: limit is a valid rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) }).map(drop)
}

/// Whether `fd` is a terminal.
pub(crate) fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty takes a plain integer.
    unsafe { libc::isatty(fd) == 1 }
}

/// Writes all of `bytes` to `fd`, retrying on interruption and waiting out
/// `EAGAIN`. Errors (a closed pipe) are returned.
pub(crate) fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: bytes is a valid buffer of its length.
        match cvt(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }) {
            Ok(n) => bytes = &bytes[n as usize..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                poll_one(fd, libc::POLLOUT, Some(Duration::from_millis(100)))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads into `buf` from `fd`; `Ok(0)` is end of file.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid writable buffer of its length.
        match cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what `fd` takes now of `bytes` (it may be non-blocking).
pub(crate) fn write(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: bytes is a valid buffer of its length.
        match cvt(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Makes reads and writes of `fd` return at once instead of waiting.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on any fd number is memory-safe.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Polls `fds` (fd, events) for up to `timeout`; returns the ready events of
/// each (none if interrupted by a signal). Allocates nothing: a thread blocked
/// in `recv` calls it once per message.
pub(crate) fn poll<const N: usize>(fds: [(RawFd, i16); N], timeout: Option<Duration>) -> io::Result<[i16; N]> {
    let mut pollfds = fds.map(|(fd, events)| libc::pollfd { fd, events, revents: 0 });
    let timeout = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: pollfds is a valid array of its length.
    match cvt(unsafe { libc::poll(pollfds.as_mut_ptr(), N as libc::nfds_t, timeout) }) {
        Ok(_) => Ok(pollfds.map(|p| p.revents)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok([0; N]),
        Err(e) => Err(e),
    }
}

fn poll_one(fd: RawFd, events: i16, timeout: Option<Duration>) -> io::Result<i16> {
    Ok(poll([(fd, events)], timeout)?[0])
}

/// Yields the CPU to the processes waiting for it (one just woken onto this CPU
/// runs first), keeping this process's priority.
pub(crate) fn yield_now() {
    // SAFETY: sched_yield takes no arguments and touches no memory.
    unsafe { libc::sched_yield() };
}

/// Lowers this process to the least CPU priority (nice 19) and yields the CPU:
/// for a process whose remaining work (its own exit) is worth less than what
/// the processes it just woke will do.
pub(crate) fn step_aside() {
    // SAFETY: setpriority takes plain integers and touches no memory.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    yield_now();
}

/// Ends the process at once with `code`, running no exit handler.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Ends the process with `code` through libc's `exit`, which runs the exit
/// handlers (the exit flush among them) but none of Rust's clean-up: the caller
/// flushes stdout itself. (`std::process::exit` also frees the main thread's
/// signal stack, an unmap the kernel's exit does anyway.)
pub(crate) fn exit(code: i32) -> ! {
    // SAFETY: exit runs the registered handlers and ends the process; nothing
    // of Rust's is left half-done by not returning.
    unsafe { libc::exit(code) }
}

/// Registers `handler` to run at `exit`.
pub(crate) fn at_exit(handler: extern "C" fn()) {
    // SAFETY: handler is a plain function that lives as long as the program.
    unsafe { libc::atexit(handler) };
}

/// The machine's physical memory in bytes.
pub(crate) fn physical_memory() -> u64 {
    // SAFETY: sysconf takes a plain integer.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64)
}

/// Eight random bytes from the kernel.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: bytes is a valid buffer of 8 bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 8 {
        // Fall back to something that differs between runs.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64 ^ (getpid().0 as u64) << 32;
    }
    u64::from_ne_bytes(bytes)
}

/// Sets close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on any fd number is memory-safe.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Reads up to `want` bytes from `fd` into the spare capacity of `buf`, growing it
/// as needed and never zero-filling (only the pages the kernel writes are
/// touched); returns the count (0 is end of file).
pub(crate) fn read_spare(fd: RawFd, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(want);
    let n = loop {
        // SAFETY: `spare` is writable memory of at least `len` bytes owned by
        // `buf`; read writes at most `len` bytes into it.
        match cvt(unsafe { libc::read(fd, spare.as_mut_ptr().cast(), len) }) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    // SAFETY: read initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// A close-on-exec, non-blocking eventfd: a counter that makes `poll` return.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain integers and returns a new fd.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: the fd is new and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a valid buffer.
    unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

/// Resets an eventfd to zero.
pub(crate) fn eventfd_clear(fd: RawFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a valid buffer.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
}

/// How many connections a process's listening socket queues before it accepts
/// them (std binds with 128; a parent of a thousand processes needs more).
const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket on an ephemeral loopback port, close-on-exec.
pub(crate) fn bind_loopback() -> io::Result<std::net::TcpListener> {
    bind_ephemeral(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A listening socket on an ephemeral port of `ip`, close-on-exec, with a long
/// backlog.
pub(crate) fn bind_ephemeral(ip: std::net::IpAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((ip, 0))?;
    listen(listener.as_raw_fd())?;
    Ok(listener)
}

/// Gives listening socket `fd` a long backlog (many processes may connect at once).
pub(crate) fn listen(fd: RawFd) -> io::Result<()> {
    // SAFETY: listen on a listening socket only changes its backlog.
    cvt(unsafe { libc::listen(fd, LISTEN_BACKLOG) }).map(drop)
}

/// Limits the process's CPU time: SIGXCPU at `limit`, SIGKILL a second later.
pub(crate) fn limit_cpu_time(limit: Duration) -> io::Result<()> {
    let soft = limit.as_secs().max(1);
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: soft + 1 };
    // SAFETY: limit is a valid rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_CPU, &limit) }).map(drop)
}

/// SIGCHLD blocked and read from a signalfd instead, for a single-threaded
/// process that polls for its children's ends beside other fds.
#[derive(Debug)]
pub(crate) struct ChildSignals {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

impl ChildSignals {
    /// Blocks SIGCHLD and opens a non-blocking signalfd for it.
    pub(crate) fn open() -> io::Result<ChildSignals> {
        // SAFETY: the sigset calls fill and read a valid, initialised sigset_t;
        // sigprocmask stores the old mask in another; signalfd returns a new fd.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old_mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            cvt(libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old_mask))?;
            let fd = cvt(libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK))?;
            Ok(ChildSignals { fd: OwnedFd::from_raw_fd(fd), old_mask })
        }
    }

    /// The fd to poll: readable once a child has changed state.
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads away the pending notices; the caller then reaps until none is left.
    pub(crate) fn clear(&self) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while read(self.fd.as_raw_fd(), &mut info).is_ok_and(|n| n == info.len()) {}
    }

    /// In a forked child: closes the fd and unblocks SIGCHLD again.
    pub(crate) fn close(self) {
        // SAFETY: old_mask is the mask sigprocmask saved in `open`.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

/// Sends one message on a `SOCK_SEQPACKET` socket, blocking until it fits.
pub(crate) fn send_packet(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: bytes is a valid buffer of its length.
        match cvt(unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `membarrier` commands (linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier_call(command: libc::c_int) -> io::Result<()> {
    // SAFETY: membarrier takes plain integers and touches no memory.
    cvt(unsafe { libc::syscall(libc::SYS_membarrier, command, 0, 0) }).map(drop)
}

/// Whether [`membarrier`] works in this process: registers the process for
/// it the first time it is asked in this process (a fork is asked anew).
/// Ask first while the process has a single thread: registering then is
/// cheap, and with more threads it waits for an RCU grace period.
pub(crate) fn membarrier_ready() -> bool {
    use std::sync::atomic::{AtomicI32, Ordering};
    /// The process that registered (or, negated, that failed to).
    static REGISTERED: AtomicI32 = AtomicI32::new(0);
    let me = getpid().0;
    match REGISTERED.load(Ordering::Relaxed) {
        pid if pid == me => true,
        pid if pid == -me => false,
        _ => {
            let ready = membarrier_call(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED).is_ok();
            REGISTERED.store(if ready { me } else { -me }, Ordering::Relaxed);
            ready
        }
    }
}

/// Runs a full memory barrier on every CPU that runs a thread of this
/// process. Only called where [`membarrier_ready`] said yes in this process
/// or the one it was forked from.
pub(crate) fn membarrier() {
    if membarrier_call(MEMBARRIER_CMD_PRIVATE_EXPEDITED).is_ok() {
        return;
    }
    // A fork must register again; failing that, the slower global barrier.
    if membarrier_ready() && membarrier_call(MEMBARRIER_CMD_PRIVATE_EXPEDITED).is_ok() {
        return;
    }
    if membarrier_call(MEMBARRIER_CMD_GLOBAL).is_err() {
        let _ = write_all(2, b"constellation: membarrier stopped working in this process; a lock cannot be kept\n");
        // SAFETY: abort is always safe to call.
        unsafe { libc::abort() };
    }
}
