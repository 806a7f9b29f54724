//! The one place values are encoded and decoded (bincode 1.3), and the frame format.
//!
//! A frame is a little-endian `u32` length, then a kind byte, then the payload; the
//! length counts the kind byte and the payload. Values serialise straight into the
//! connection's buffer, without an intermediate copy.

use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// The largest frame accepted from anyone; a longer length prefix is corrupt input.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// The bytes of a frame before its payload: the length, then the kind.
pub(crate) const HEADER: usize = 5;

/// A `Vec<u8>` field encoded in bulk (`#[serde(with = "codec::bulk_bytes")]`):
/// the same bytes as serde's element-by-element encoding under bincode (a `u64`
/// length, then the bytes), without a call per byte.
pub(crate) mod bulk_bytes {
    use serde::{de, Deserializer, Serializer};
    use std::fmt;

    /// Encodes `bytes` as one byte string.
    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Decodes one byte string.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }
    }
}

/// Input that is not a valid frame or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError(pub(crate) String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<bincode::Error> for CodecError {
    fn from(error: bincode::Error) -> CodecError {
        CodecError(error.to_string())
    }
}

/// Encodes a value on its own.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serialize(value)?)
}

/// Decodes a value encoded by [`encode`] or carried in a frame.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if is_byte_vec::<T>() {
        let vec = decode_byte_vec(bytes)?;
        // SAFETY: `T` is `Vec<u8>`; the value is moved out of `vec`, which is forgotten.
        let value = unsafe { std::ptr::read(&vec as *const Vec<u8> as *const T) };
        std::mem::forget(vec);
        return Ok(value);
    }
    Ok(bincode::deserialize(bytes)?)
}

/// Decodes a value from a payload held in two parts: its first eight bytes and
/// the rest. A `Vec<u8>` is the rest itself, without a copy.
pub(crate) fn decode_split<T: DeserializeOwned>(head: [u8; 8], body: Vec<u8>) -> Result<T, CodecError> {
    if is_byte_vec::<T>() {
        let len = u64::from_le_bytes(head);
        if len != body.len() as u64 {
            return Err(CodecError(format!("a byte vector of length {len} in {} bytes", body.len())));
        }
        let body = std::mem::ManuallyDrop::new(body);
        // SAFETY: `T` is `Vec<u8>`; the vector is moved out of the `ManuallyDrop`,
        // which never drops it, so it has one owner.
        return Ok(unsafe { std::ptr::read(&*body as *const Vec<u8> as *const T) });
    }
    let mut payload = Vec::with_capacity(8 + body.len());
    payload.extend_from_slice(&head);
    payload.extend_from_slice(&body);
    decode(&payload)
}

fn decode_byte_vec(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let (len, rest) =
        bytes.split_first_chunk::<8>().ok_or_else(|| CodecError("a byte vector without its length".into()))?;
    let len = u64::from_le_bytes(*len);
    if len != rest.len() as u64 {
        return Err(CodecError(format!("a byte vector of length {len} in {} bytes", rest.len())));
    }
    Ok(rest.to_vec())
}

/// Whether `T` is `Vec<u8>`, which serde handles a byte at a time: bulk data gets
/// a bulk path with the same encoding (a `u64` length, then the bytes).
fn is_byte_vec<T: ?Sized>() -> bool {
    typeid::of::<T>() == typeid::of::<Vec<u8>>()
}

/// Appends a frame of `kind` holding `value` to `buf`. On error `buf` is unchanged.
/// Always inlined: it runs once per value sent, in the sender's loop.
#[inline(always)]
pub(crate) fn append_frame<T: Serialize + ?Sized>(buf: &mut Vec<u8>, kind: u8, value: &T) -> Result<(), CodecError> {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, kind]);
    if is_byte_vec::<T>() {
        // SAFETY: `T` is `Vec<u8>` (type ids are equal; `Vec<u8>` has no lifetimes).
        let bytes = unsafe { &*(value as *const T as *const Vec<u8>) };
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    } else if let Err(error) = bincode::serialize_into(&mut *buf, value) {
        buf.truncate(start);
        return Err(error.into());
    }
    let len = buf.len() - start - 4;
    if len > MAX_FRAME {
        buf.truncate(start);
        return Err(too_large(len));
    }
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

#[cold]
fn too_large(len: usize) -> CodecError {
    CodecError(format!("a value of {len} bytes is larger than the largest frame ({MAX_FRAME} bytes)"))
}

/// A `Vec<u8>` value of at least this many bytes is sent without being copied:
/// its frame's header goes ahead of it, and the vector itself is queued.
pub(crate) const OWNED_BYTES: usize = 64 * 1024;

/// `value` as the `Vec<u8>` it is, if `T` is `Vec<u8>` of at least
/// [`OWNED_BYTES`] bytes (then [`take_byte_vec`] takes it without a copy).
pub(crate) fn large_byte_vec<T>(value: &T) -> Option<&Vec<u8>> {
    if !is_byte_vec::<T>() {
        return None;
    }
    // SAFETY: `T` is `Vec<u8>` (type ids are equal; `Vec<u8>` has no lifetimes).
    let bytes = unsafe { &*(value as *const T as *const Vec<u8>) };
    (bytes.len() >= OWNED_BYTES).then_some(bytes)
}

/// Moves a `T` that [`large_byte_vec`] accepted out as the `Vec<u8>` it is.
///
/// # Panics
/// If `T` is not `Vec<u8>`.
pub(crate) fn take_byte_vec<T>(value: T) -> Vec<u8> {
    assert!(is_byte_vec::<T>(), "take_byte_vec on a type other than Vec<u8>");
    let value = std::mem::ManuallyDrop::new(value);
    // SAFETY: `T` is `Vec<u8>` (checked above); the value is moved out of the
    // `ManuallyDrop`, which never drops it, so it has one owner.
    unsafe { std::ptr::read(&*value as *const T as *const Vec<u8>) }
}

/// The header of a `DATA`-like frame of `kind` carrying a `Vec<u8>` of `len`
/// bytes (the frame header, then the vector's length as bincode writes it); the
/// bytes follow it on the wire.
pub(crate) fn byte_vec_header(kind: u8, len: usize) -> Result<[u8; HEADER + 8], CodecError> {
    let frame = 1 + 8 + len;
    if frame > MAX_FRAME {
        return Err(CodecError(format!(
            "a value of {frame} bytes is larger than the largest frame ({MAX_FRAME} bytes)"
        )));
    }
    let mut header = [0u8; HEADER + 8];
    header[..4].copy_from_slice(&(frame as u32).to_le_bytes());
    header[4] = kind;
    header[HEADER..].copy_from_slice(&(len as u64).to_le_bytes());
    Ok(header)
}

/// Appends a frame of `kind` whose payload is `payload` as it is.
pub(crate) fn append_raw_frame(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    buf.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// A complete frame found at the start of a buffer.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    /// Where the payload lies in the buffer.
    pub(crate) payload: std::ops::Range<usize>,
    /// How many bytes the whole frame takes.
    pub(crate) len: usize,
}

/// Finds the first frame in `buf`: `Ok(None)` when it is not complete yet.
#[inline]
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<Frame>, CodecError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(corrupt_length(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some(Frame { kind: buf[4], payload: HEADER..4 + len, len: 4 + len }))
}

#[cold]
fn corrupt_length(len: usize) -> CodecError {
    CodecError(format!("corrupt frame: length {len}"))
}

/// How many bytes the frame that starts `buf` needs in all, once its header is there.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| 4 + u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        append_frame(&mut buf, 7, &(1u64, "two".to_string())).unwrap();
        append_raw_frame(&mut buf, 9, b"raw");
        let first = next_frame(&buf).unwrap().unwrap();
        assert_eq!(first.kind, 7);
        let value: (u64, String) = decode(&buf[first.payload.clone()]).unwrap();
        assert_eq!(value, (1, "two".to_string()));
        let rest = &buf[first.len..];
        let second = next_frame(rest).unwrap().unwrap();
        assert_eq!((second.kind, &rest[second.payload.clone()]), (9, &b"raw"[..]));
        assert!(next_frame(&rest[..3]).unwrap().is_none());
    }

    #[test]
    fn byte_vectors_take_the_bulk_path_with_bincodes_encoding() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut fast = Vec::new();
        append_frame(&mut fast, 2, &bytes).unwrap();
        assert_eq!(&fast[5..], &bincode::serialize(&bytes).unwrap()[..]);
        let frame = next_frame(&fast).unwrap().unwrap();
        assert_eq!(decode::<Vec<u8>>(&fast[frame.payload]).unwrap(), bytes);
        assert!(decode::<Vec<u8>>(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn corrupt_length_is_an_error() {
        assert!(next_frame(&[0, 0, 0, 0, 1]).is_err());
        assert!(next_frame(&[255, 255, 255, 255, 1]).is_err());
    }
}
