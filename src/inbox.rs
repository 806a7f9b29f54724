//! `Inbox`: the bytes received from one peer, read straight from its socket and
//! parsed in place, so a received value costs no allocation or copy before it is
//! decoded.

use crate::{
    codec::{self, CodecError},
    sys,
};
use std::{io, ops::Range, os::fd::RawFd};

/// Reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// An emptied buffer up to this size is kept for reuse; larger ones are freed, so
/// an idle connection holds little.
const KEEP: usize = 16 * 1024;
/// [`Inbox::move_frames`] moves at most this many bytes at once.
const BATCH: usize = 16 * 1024;

/// Received bytes: complete frames, then possibly the start of the next one.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    /// Where the next frame starts.
    pos: usize,
}

impl Inbox {
    /// Bytes received and not yet taken.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends bytes received elsewhere (after a handshake).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Reads once from `fd`, making room for at least the rest of the frame under
    /// way. Returns the count (0 is end of file) and whether the read filled the
    /// room it had (if not, the socket held no more).
    pub(crate) fn read_from(&mut self, fd: RawFd) -> io::Result<(usize, bool)> {
        let pending = &self.buf[self.pos..];
        let want = codec::frame_len(pending)
            .map_or(READ_CHUNK, |n| n.saturating_sub(pending.len()))
            .clamp(READ_CHUNK, codec::MAX_FRAME);
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < want {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let n = sys::read_spare(fd, &mut self.buf, want)?;
        Ok((n, n == want))
    }

    /// Takes the next complete frame: its kind and where its payload lies (valid
    /// for [`Inbox::bytes`] until the next read).
    pub(crate) fn next(&mut self) -> Result<Option<(u8, Range<usize>)>, CodecError> {
        let Some(frame) = codec::next_frame(&self.buf[self.pos..])? else {
            return Ok(None);
        };
        let payload = self.pos + frame.payload.start..self.pos + frame.payload.end;
        self.pos += frame.len;
        Ok(Some((frame.kind, payload)))
    }

    /// The bytes of a payload returned by [`Inbox::next`].
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Whether a complete frame is waiting.
    pub(crate) fn has_frame(&self) -> bool {
        matches!(codec::next_frame(&self.buf[self.pos..]), Ok(Some(_)) | Err(_))
    }

    /// Whether any value (a `DATA` frame, of kind `data`) waits to be taken; other
    /// frames only mark a `Sender` opened or dropped.
    pub(crate) fn holds_values(&self, data: u8) -> bool {
        let mut rest = &self.buf[self.pos..];
        while let Ok(Some(frame)) = codec::next_frame(rest) {
            if frame.kind == data {
                return true;
            }
            rest = &rest[frame.len..];
        }
        false
    }

    /// Moves the complete frames at the front to the end of `into`, as long as
    /// they fit in [`BATCH`] bytes together (a larger frame stays, to be parsed in
    /// place). Returns whether any moved.
    ///
    /// A `Receiver` takes small values this way, many per lock of the connection
    /// state, and parses them from its own buffer.
    pub(crate) fn move_frames(&mut self, into: &mut Inbox) -> bool {
        let start = self.pos;
        let mut end = start;
        while let Ok(Some(frame)) = codec::next_frame(&self.buf[end..]) {
            if end - start + frame.len > BATCH {
                break;
            }
            end += frame.len;
        }
        if end == start {
            return false;
        }
        into.buf.extend_from_slice(&self.buf[start..end]);
        self.pos = end;
        self.tidy();
        true
    }

    /// Puts `bytes` back in front of what is pending: what a `Receiver` took and
    /// did not receive before it was dropped.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(bytes.len() + self.pending());
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(&self.buf[self.pos..]);
        self.buf = buf;
        self.pos = 0;
    }

    /// The bytes pending (complete frames, then possibly the start of one).
    pub(crate) fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Releases the space of frames already taken, once everything is taken.
    pub(crate) fn tidy(&mut self) {
        if self.pos == self.buf.len() {
            self.pos = 0;
            if self.buf.capacity() > KEEP {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut wire = Vec::new();
        for i in 0..100u32 {
            codec::append_frame(&mut wire, 2, &vec![i as u8; i as usize * 100]).unwrap();
        }
        let mut inbox = Inbox::default();
        let mut seen = 0u32;
        for piece in wire.chunks(777) {
            std::io::Write::write_all(&mut &write, piece).unwrap();
            assert!(inbox.read_from(read.as_raw_fd()).unwrap().0 > 0);
            while let Some((kind, payload)) = inbox.next().unwrap() {
                assert_eq!(kind, 2);
                let value: Vec<u8> = codec::decode(inbox.bytes(payload)).unwrap();
                assert_eq!(value, vec![seen as u8; seen as usize * 100]);
                seen += 1;
            }
            inbox.tidy();
        }
        assert_eq!(seen, 100);
        assert_eq!(inbox.pending(), 0);
    }
}
