//! `Inbox`: the bytes received from one peer, read straight from its socket and
//! parsed in place, so a received value costs no allocation or copy before it is
//! decoded. A large frame is read into a buffer of its own instead, which a
//! received byte vector then is, never copied.
//!
//! A `Receiver` takes the bytes of its peer's inbox by swapping buffers with it
//! ([`Inbox::lend`]), not by copying them, and parses the frames there; it gives
//! back the start of a frame still arriving ([`Inbox::unread`]) before the
//! inbox parses again. Until then the inbox is *headless*: its bytes continue
//! a frame it does not hold, so it only reads.

use crate::{
    codec::{self, CodecError},
    sys,
};
use std::{io, ops::Range, os::fd::RawFd};

/// Reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// An emptied buffer up to this size is kept for reuse; larger ones are freed, so
/// an idle connection holds little. A stream fills buffers a few reads deep
/// before its `Receiver` takes them.
const KEEP: usize = 64 * 1024;
/// Room kept free in front of a buffer that starts empty, so that giving back
/// the start of a frame (see [`Inbox::unread`]) costs no copy of what follows.
const HEADROOM: usize = 256;

/// Received bytes: complete frames, then possibly the start of the next one.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    /// Where the next frame starts.
    pos: usize,
    /// A large frame ahead of everything in `buf`, read into its own buffer.
    large: Option<Large>,
    /// `buf` continues a frame whose start a `Receiver` holds (see the module
    /// doc): nothing is parsed until [`Inbox::unread`] puts it back.
    headless: bool,
}

/// A frame whose payload is at least [`codec::OWNED_BYTES`] long: its kind, the
/// first eight bytes of its payload (a byte vector's length), and the rest, read
/// straight into a buffer of exactly its size.
#[derive(Debug)]
pub(crate) struct Large {
    pub(crate) kind: u8,
    pub(crate) head: [u8; 8],
    pub(crate) body: Vec<u8>,
}

impl Large {
    fn missing(&self) -> usize {
        self.body.capacity() - self.body.len()
    }
}

/// The next frame of an [`Inbox`].
#[derive(Debug)]
pub(crate) enum Next {
    /// Its kind and where its payload lies (for [`Inbox::bytes`]).
    InPlace(u8, Range<usize>),
    /// A large frame, taken out.
    Large(Large),
}

impl Inbox {
    /// Bytes received and not yet taken.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.pos + self.large.as_ref().map_or(0, |large| 8 + large.body.len())
    }

    /// Moves the frame at the front to a buffer of its own if it is large and
    /// incomplete, and its payload's first eight bytes are here: what follows of
    /// it is read straight there.
    fn start_large(&mut self) {
        if self.headless {
            return;
        }
        let pending = &self.buf[self.pos..];
        let Some(len) = codec::frame_len(pending) else { return };
        let payload = len - codec::HEADER;
        if self.large.is_some() || payload < codec::OWNED_BYTES || pending.len() >= len {
            return;
        }
        let Some(head) = pending.get(codec::HEADER..codec::HEADER + 8) else { return };
        let head: [u8; 8] = head.try_into().expect("eight bytes");
        let kind = pending[4];
        let mut body = Vec::with_capacity(payload - 8);
        body.extend_from_slice(&pending[codec::HEADER + 8..]);
        self.large = Some(Large { kind, head, body });
        self.buf.truncate(self.pos);
        self.tidy();
    }

    /// Appends bytes received elsewhere (after a handshake).
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Reads once from `fd`, making room for at least the rest of the frame under
    /// way. Returns the count (0 is end of file) and whether the read filled the
    /// room it had (if not, the socket held no more).
    pub(crate) fn read_from(&mut self, fd: RawFd) -> io::Result<(usize, bool)> {
        self.start_large();
        if let Some(large) = &mut self.large {
            // One large frame is held at a time: what follows it is read once it
            // is taken (so the next one gets its own buffer too).
            let want = large.missing();
            if want == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = sys::read_spare(fd, &mut large.body, want)?;
            return Ok((n, n == want));
        }
        let pending = &self.buf[self.pos..];
        let want = codec::frame_len(pending)
            .filter(|_| !self.headless)
            .map_or(READ_CHUNK, |n| n.saturating_sub(pending.len()))
            .clamp(READ_CHUNK, codec::MAX_FRAME);
        if self.pos > HEADROOM && self.buf.capacity() - self.buf.len() < want {
            self.buf.drain(HEADROOM..self.pos);
            self.pos = HEADROOM;
        }
        let n = sys::read_spare(fd, &mut self.buf, want)?;
        self.start_large();
        Ok((n, n == want))
    }

    /// Takes the next complete frame: its kind and where its payload lies (valid
    /// for [`Inbox::bytes`] until the next read).
    #[inline]
    pub(crate) fn next(&mut self) -> Result<Option<(u8, Range<usize>)>, CodecError> {
        if self.large.is_some() || self.headless {
            return Ok(None);
        }
        let Some(frame) = codec::next_frame(&self.buf[self.pos..])? else {
            return Ok(None);
        };
        let payload = self.pos + frame.payload.start..self.pos + frame.payload.end;
        self.pos += frame.len;
        Ok(Some((frame.kind, payload)))
    }

    /// Takes the next frame if it is complete, of `kind`, and `parse` makes a
    /// value of its payload; otherwise leaves it (bad ones too) for
    /// [`Inbox::next`]. The fast path of receiving: no error to carry back.
    #[inline(always)]
    pub(crate) fn take_if<V>(&mut self, kind: u8, parse: impl FnOnce(&[u8]) -> Option<V>) -> Option<V> {
        if self.large.is_some() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let header = rest.get(..codec::HEADER)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if header[4] != kind {
            return None;
        }
        // A length of 0 is corrupt (and makes this range empty, so `None`).
        let value = parse(rest.get(codec::HEADER..4 + len)?)?;
        self.pos += 4 + len;
        Some(value)
    }

    /// Takes the next complete frame, large ones included.
    pub(crate) fn next_any(&mut self) -> Result<Option<Next>, CodecError> {
        match &self.large {
            Some(large) if large.missing() == 0 => Ok(self.large.take().map(Next::Large)),
            Some(_) => Ok(None),
            None => Ok(self.next()?.map(|(kind, payload)| Next::InPlace(kind, payload))),
        }
    }

    /// The bytes of a payload returned by [`Inbox::next`].
    #[inline]
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Whether a complete frame is waiting (headless: whether anything is,
    /// which is as much as it can tell).
    pub(crate) fn has_frame(&self) -> bool {
        if self.headless {
            return self.pending() > 0;
        }
        match &self.large {
            Some(large) => large.missing() == 0,
            None => matches!(codec::next_frame(&self.buf[self.pos..]), Ok(Some(_)) | Err(_)),
        }
    }

    /// Whether any value (a `DATA` frame, of kind `data`) waits to be taken; other
    /// frames only mark a `Sender` opened or dropped.
    pub(crate) fn holds_values(&self, data: u8) -> bool {
        if self.headless {
            return self.pending() > 0;
        }
        if self.large.as_ref().is_some_and(|large| large.kind == data) {
            return true;
        }
        let mut rest = &self.buf[self.pos..];
        while let Ok(Some(frame)) = codec::next_frame(rest) {
            if frame.kind == data {
                return true;
            }
            rest = &rest[frame.len..];
        }
        false
    }

    /// Hands everything received to `into` (a `Receiver`'s own inbox, holding
    /// nothing) by swapping buffers, if a complete frame is at the front: no
    /// copy, and no walk over the frames. The inbox is then headless until
    /// `into`'s rest comes back through [`Inbox::unread`]. Returns whether it
    /// handed anything.
    ///
    /// A `Receiver` takes small values this way, many per lock of the
    /// connection state, and parses them from its own buffer.
    pub(crate) fn lend(&mut self, into: &mut Inbox) -> bool {
        debug_assert!(into.pending() == 0 && into.large.is_none());
        if self.headless || self.large.is_some() || !self.has_frame() {
            return false;
        }
        std::mem::swap(&mut self.buf, &mut into.buf);
        into.pos = self.pos;
        self.reset();
        self.headless = true;
        true
    }

    /// Empties the buffer, keeping [`HEADROOM`] in front (and the buffer, if it
    /// is small enough to keep).
    fn reset(&mut self) {
        self.clear();
        self.buf.resize(HEADROOM, 0);
        self.pos = HEADROOM;
    }

    /// Puts `bytes` back in front of what is pending: what a `Receiver` took
    /// and did not receive (the start of a frame still arriving, or everything
    /// left when it is dropped). Ends the inbox's headless state.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        self.headless = false;
        if bytes.is_empty() {
            return;
        }
        if bytes.len() <= self.pos && self.large.is_none() {
            self.pos -= bytes.len();
            self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
            return;
        }
        let mut buf = Vec::with_capacity(bytes.len() + self.pending() + codec::HEADER);
        buf.extend_from_slice(bytes);
        if let Some(large) = self.large.take() {
            // The large frame follows what is put back: into the buffer it goes.
            let len = 1 + 8 + large.body.capacity();
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.push(large.kind);
            buf.extend_from_slice(&large.head);
            buf.extend_from_slice(&large.body);
        }
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
        // At `HEADROOM` with nothing after it, it is as `reset` leaves it.
        if self.pos == self.buf.len() && self.pos != HEADROOM {
            self.reset();
        }
    }

    /// Drops everything pending (what [`Inbox::lend`] handed, once its rest
    /// went back), keeping the buffer if it is small enough to keep.
    pub(crate) fn clear(&mut self) {
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.pos = 0;
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

    #[test]
    fn frames_lent_to_a_receiver_and_given_back_in_part_arrive_whole_and_in_order() {
        // Small and large frames, written in pieces of odd sizes, read into an
        // inbox that lends what it has to a receiver's inbox, which parses it
        // and gives back the start of a frame still arriving: the way
        // `Receiver::refill` uses them, with reads coming while it is lent.
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        read.set_nonblocking(true).unwrap();
        let sizes: Vec<usize> = (0..400).map(|i| if i % 37 == 5 { 70_000 + i } else { i * 7 % 300 }).collect();
        let mut wire = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            codec::append_frame(&mut wire, 2, &vec![i as u8; size]).unwrap();
        }
        let writer = std::thread::spawn(move || {
            for piece in wire.chunks(4_999) {
                std::io::Write::write_all(&mut &write, piece).unwrap();
            }
        });
        let (mut inbox, mut taken) = (Inbox::default(), Inbox::default());
        let mut received = Vec::new();
        while received.len() < sizes.len() {
            let _ = inbox.read_from(read.as_raw_fd());
            inbox.unread(taken.rest());
            taken.clear();
            if inbox.lend(&mut taken) {
                let _ = inbox.read_from(read.as_raw_fd());
                // What was read continues a frame the inbox does not hold: it
                // must not be taken for a frame's start.
                assert!(
                    inbox.large.is_none() && inbox.buf.capacity() <= 2 * KEEP,
                    "a lent inbox parsed the middle of a frame as its start"
                );
                while let Some((_, payload)) = taken.next().unwrap() {
                    received.push(codec::decode::<Vec<u8>>(taken.bytes(payload)).unwrap());
                }
            } else if let Some(next) = inbox.next_any().unwrap() {
                received.push(match next {
                    Next::Large(large) => codec::decode_split(large.head, large.body).unwrap(),
                    Next::InPlace(_, payload) => codec::decode(inbox.bytes(payload)).unwrap(),
                });
            }
        }
        writer.join().unwrap();
        for (i, (value, &size)) in received.iter().zip(&sizes).enumerate() {
            assert!(value.len() == size && value.iter().all(|&b| b == i as u8), "value {i} is wrong");
        }
    }

    #[test]
    fn take_if_takes_only_a_whole_frame_of_its_kind_that_parses() {
        let mut inbox = Inbox::default();
        let mut wire = Vec::new();
        codec::append_frame(&mut wire, 2, &7u64).unwrap();
        codec::append_frame(&mut wire, 3, &8u64).unwrap();
        codec::append_frame(&mut wire, 2, &9u64).unwrap();
        let decode = |payload: &[u8]| codec::decode::<u64>(payload).ok();
        // Half of the first frame: nothing to take.
        inbox.extend(&wire[..6]);
        assert_eq!(inbox.take_if(2, decode), None);
        inbox.extend(&wire[6..]);
        assert_eq!(inbox.take_if(2, decode), Some(7));
        // A frame of another kind, or one that does not parse, stays for `next`.
        assert_eq!(inbox.take_if(2, decode), None);
        assert_eq!(inbox.next().unwrap().map(|(kind, _)| kind), Some(3));
        assert_eq!(inbox.take_if(2, |_| None::<u64>), None);
        assert_eq!(inbox.take_if(2, decode), Some(9));
        // A frame of length 0 is corrupt: left for `next` to say so.
        inbox.extend(&[0, 0, 0, 0, 2]);
        assert_eq!(inbox.take_if(2, decode), None);
        assert!(inbox.next().is_err());
    }
}

#[cfg(test)]
mod large_tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn large_frames_are_read_into_their_own_buffer() {
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        read.set_nonblocking(true).unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..5u8 {
                let mut frame = Vec::new();
                codec::append_frame(&mut frame, 2, &vec![i; 1 << 20]).unwrap();
                std::io::Write::write_all(&mut &write, &frame).unwrap();
            }
        });
        let mut inbox = Inbox::default();
        let (mut large, mut in_place) = (0, 0);
        while large + in_place < 5 {
            let _ = inbox.read_from(read.as_raw_fd());
            while let Some(next) = inbox.next_any().unwrap() {
                match next {
                    Next::Large(frame) => {
                        assert_eq!(frame.body.len(), 1 << 20);
                        large += 1;
                    }
                    Next::InPlace(..) => in_place += 1,
                }
            }
            inbox.tidy();
        }
        writer.join().unwrap();
        assert_eq!((large, in_place), (5, 0));
    }
}
