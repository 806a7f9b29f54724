//! Handing open fds to another process over a Unix socket (`SCM_RIGHTS`), one
//! message per hand-over on a `SOCK_SEQPACKET` pair, so messages keep their
//! boundaries and fds never mix between them.

use super::cvt;
use std::{
    io, mem,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    ptr,
};

/// The most fds one message carries.
const MAX_FDS: usize = 8;

/// A connected pair of close-on-exec `SOCK_SEQPACKET` Unix sockets.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the control message of `MAX_FDS` fds, aligned as `cmsghdr` needs.
#[repr(C)]
struct ControlBuffer {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 128],
}

/// Sends `payload` with copies of `fds`, without blocking: `WouldBlock` when the
/// socket's queue is full.
pub(crate) fn send_fds(socket: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS && !payload.is_empty());
    let fds_len = mem::size_of_val(fds);
    let mut control = ControlBuffer { _align: [], bytes: [0; 128] };
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut header: libc::msghdr = unsafe { mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.bytes.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    header.msg_controllen = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    // SAFETY: the control buffer is aligned for cmsghdr and holds CMSG_SPACE of
    // MAX_FDS fds (at most 56 bytes on 64-bit Linux), so the first header and its
    // data fit in it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as usize;
        ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
    }
    // SAFETY: header points at the iovec and control buffer above, alive for the call.
    cvt(unsafe { libc::sendmsg(socket, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }).map(drop)
}

/// Receives one message into `payload`, blocking: its length and the fds it
/// carried (close-on-exec), or `None` once the peer has closed the socket.
pub(crate) fn recv_fds(socket: RawFd, payload: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut control = ControlBuffer { _align: [], bytes: [0; 128] };
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut header: libc::msghdr = unsafe { mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.bytes.as_mut_ptr().cast();
    header.msg_controllen = control.bytes.len();
    let len = loop {
        // SAFETY: header points at the iovec and control buffer above, alive for the call.
        match cvt(unsafe { libc::recvmsg(socket, &mut header, libc::MSG_CMSG_CLOEXEC) }) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            result => break result? as usize,
        }
    };
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled the control buffer and set msg_controllen; the CMSG
    // macros walk only within it, and each SCM_RIGHTS fd is new and ours alone.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                fds.extend((0..count).map(|i| OwnedFd::from_raw_fd(data.add(i).read_unaligned())));
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if header.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "more fds than expected in one message"));
    }
    Ok(Some((len, fds)))
}
