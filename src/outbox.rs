//! `Outbox`: the frames queued for one peer, as a queue of chunks written with
//! `writev`. Small frames share a chunk (so writes coalesce); a large value is
//! serialised once into its chunk and never copied again.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, Write},
};

/// Frames are appended to the open chunk until it holds this many bytes.
const CHUNK: usize = 64 * 1024;
/// An emptied chunk up to this size is kept for reuse: a stream of small values,
/// written 16 KiB at a time by its sender (see `lane`), then appends to the
/// same 32 KiB allocation, instead of growing a new one each time.
const KEEP: usize = 32 * 1024;
// A pushed chunk is at least this full, so frames appended after it start a
// chunk of their own instead of growing it.
const _: () = assert!(crate::codec::OWNED_BYTES >= CHUNK);

/// At most this many chunks go into one `writev`.
const MAX_SLICES: usize = 64;

/// Bytes queued for a peer, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Chunks no longer appended to (filled ones, and large values), oldest first.
    chunks: VecDeque<Vec<u8>>,
    /// The chunk frames are appended to, queued after `chunks`: kept out of the
    /// deque, so an append touches no deque.
    open: Vec<u8>,
    /// How much of the first queued buffer (the first chunk, else `open`) is
    /// already written.
    head_written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
}

impl Outbox {
    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Appends frames through `append`, which writes them at the end of the buffer it
    /// is given and reports how it went; on error it must leave the buffer as it was.
    #[inline(always)]
    pub(crate) fn append<E>(&mut self, append: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        if self.open.len() >= CHUNK {
            self.close_open();
        }
        let before = self.open.len();
        let result = append(&mut self.open);
        self.queued += self.open.len() - before;
        result
    }

    /// Moves the open chunk, if it holds anything, behind the closed ones.
    fn close_open(&mut self) {
        if !self.open.is_empty() {
            self.chunks.push_back(std::mem::take(&mut self.open));
        }
    }

    /// Queues `header`, then `chunk` as it is: a large value, never copied
    /// (frames appended later start a chunk of their own).
    pub(crate) fn push_chunk(&mut self, header: &[u8], chunk: Vec<u8>) {
        let _ = self.append(|buf| {
            buf.extend_from_slice(header);
            Ok::<(), ()>(())
        });
        self.close_open();
        if !chunk.is_empty() {
            self.queued += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Writes as much as `to` takes without blocking. Returns whether anything
    /// was written; `WouldBlock` is not an error.
    pub(crate) fn write_to(&mut self, to: &mut impl Write) -> io::Result<bool> {
        let mut progressed = false;
        while self.queued > 0 {
            let open = (!self.open.is_empty()).then_some(&self.open);
            // On the stack: a write allocates nothing.
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter().chain(open)) {
                *slot = IoSlice::new(if count == 0 { &chunk[self.head_written..] } else { chunk });
                count += 1;
            }
            match to.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    progressed = true;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progressed)
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let first_left = self.chunks.front().map_or(self.open.len(), Vec::len) - self.head_written;
            if n < first_left {
                self.head_written += n;
                return;
            }
            n -= first_left;
            self.head_written = 0;
            if self.chunks.pop_front().is_none() {
                // The open chunk is written: it is the last, so nothing is left.
                debug_assert_eq!(self.queued, 0);
                self.open.clear();
            }
        }
        if self.queued == 0 {
            // Keep the open chunk's allocation unless it is large: an idle peer
            // holds little.
            self.open.clear();
            if self.open.capacity() > KEEP {
                self.open = Vec::new();
            }
        }
    }

    /// Drops everything queued.
    pub(crate) fn clear(&mut self) {
        *self = Outbox::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_bytes(outbox: &mut Outbox, bytes: &[u8]) {
        outbox
            .append(|buf| -> Result<(), ()> {
                buf.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
    }

    /// A writer that takes at most `limit` bytes per call, then would block.
    struct Trickle {
        written: Vec<u8>,
        limit: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let n = buf.len().min(self.limit);
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_everything_in_order_across_partial_writes() {
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let bytes = vec![(i % 251) as u8; (i as usize * 37) % 3000];
            expected.extend_from_slice(&bytes);
            append_bytes(&mut outbox, &bytes);
        }
        assert_eq!(outbox.queued(), expected.len());
        let mut sink = Trickle { written: Vec::new(), limit: 5000, calls_left: 0 };
        while outbox.queued() > 0 {
            sink.calls_left = 3;
            outbox.write_to(&mut sink).unwrap();
        }
        assert_eq!(sink.written, expected);
        assert!(outbox.chunks.is_empty(), "written chunks are released");
    }

    #[test]
    fn appends_between_partial_writes_keep_their_order() {
        // The open chunk is written in part, appended to, closed when full,
        // and written again: what was written of it must not be written twice.
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        let mut sink = Trickle { written: Vec::new(), limit: 7_001, calls_left: 0 };
        for i in 0..3000usize {
            let bytes = vec![(i % 253) as u8; 1 + i * 31 % 900];
            expected.extend_from_slice(&bytes);
            append_bytes(&mut outbox, &bytes);
            if i % 7 == 0 {
                let large = vec![(i % 13) as u8; CHUNK + i];
                expected.extend_from_slice(b"h");
                expected.extend_from_slice(&large);
                outbox.push_chunk(b"h", large);
            }
            sink.calls_left = 1;
            outbox.write_to(&mut sink).unwrap();
        }
        while outbox.queued() > 0 {
            sink.calls_left = 1;
            outbox.write_to(&mut sink).unwrap();
        }
        assert_eq!(sink.written.len(), expected.len());
        assert!(sink.written == expected, "the bytes came out of order");
        assert!(outbox.chunks.is_empty() && outbox.open.is_empty());
    }

    #[test]
    fn pushed_chunks_keep_their_place_among_appended_frames() {
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for i in 0..50usize {
            let small = vec![i as u8; i * 13 % 700];
            expected.extend_from_slice(&small);
            append_bytes(&mut outbox, &small);
            if i % 3 == 0 {
                let large = vec![(i + 100) as u8; CHUNK + i * 1000];
                expected.extend_from_slice(b"head");
                expected.extend_from_slice(&large);
                outbox.push_chunk(b"head", large);
            }
        }
        assert_eq!(outbox.queued(), expected.len());
        let mut sink = Trickle { written: Vec::new(), limit: 10_000, calls_left: 0 };
        while outbox.queued() > 0 {
            sink.calls_left = 2;
            outbox.write_to(&mut sink).unwrap();
        }
        assert_eq!(sink.written, expected);
    }

    #[test]
    fn memory_stays_bounded_when_the_queue_never_empties() {
        // A steady stream the socket takes a little slower than it comes: the queue
        // is never empty, yet written chunks must be released as they go.
        let mut outbox = Outbox::default();
        let mut sink = Trickle { written: Vec::new(), limit: 900 * 1024, calls_left: 0 };
        let value = vec![1u8; 1024 * 1024];
        for _ in 0..300 {
            append_bytes(&mut outbox, &value);
            sink.calls_left = 1;
            outbox.write_to(&mut sink).unwrap();
            sink.written.clear();
            let held: usize = outbox.chunks.iter().chain([&outbox.open]).map(Vec::capacity).sum();
            assert!(held <= outbox.queued() + 2 * 1024 * 1024, "{held} bytes held for {} queued", outbox.queued());
        }
        assert!(outbox.queued() > 0);
    }
}
