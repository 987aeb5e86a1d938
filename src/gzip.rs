//! Bodies stored gzip-compressed (docs/compression.md): compressed once,
//! on the miss that stores them, and decompressed for clients that do not
//! accept gzip, in bounded chunks as the response is sent.

use std::io::{Read, Write};

use bytes::{buf::Reader, Buf, Bytes, BytesMut};
use flate2::{bufread::GzDecoder, write::GzEncoder};
use http::HeaderMap;

use crate::Compression;

/// How much a decompressing body hands the connection at a time.
const CHUNK: usize = 32 * 1024;

/// The smallest gzip member: a 10-byte header, an empty deflate block and
/// the 8-byte trailer.
const MIN_MEMBER: usize = 20;
/// The header the encoder writes (no name, comment or extra field).
const HEADER: usize = 10;
/// The trailer: CRC-32 and length of the decoded data.
const TRAILER: usize = 8;

/// Bodies from this size up are compressed on tokio's blocking pool, not on
/// the runtime thread that serves requests.
const COMPRESS_ASIDE: usize = 256 * 1024;

/// `body` compressed as `policy` says, or `None` when the policy, the
/// body's size, type or coding, or the saving rule it out.
pub(crate) async fn for_store(
    policy: &Compression,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Bytes> {
    let wanted = policy.codec.is_some()
        && body.len() >= policy.threshold.max(1)
        && crate::http::may_compress(headers);
    if !wanted {
        return None;
    }
    let (level, ratio) = (policy.level, policy.max_ratio);
    if body.len() < COMPRESS_ASIDE {
        return compress(body, level, ratio);
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || compress(&body, level, ratio))
        .await
        .ok()
        .flatten()
}

/// `body` gzip-compressed at `level`, or `None` when that does not bring it
/// to `max_ratio` of its length or less (it is then stored as it is).
///
/// The header's four modification-time bytes, which HTTP clients ignore,
/// hold the CRC-32 of the compressed data instead: the [`member_id`] that
/// makes the gzip representation's entity tag name these exact bytes. Two
/// instances with other levels or library versions store other bytes for
/// the same response, and so give other tags: a client never resumes a
/// download of one with a range of the other.
pub(crate) fn compress(body: &[u8], level: u32, max_ratio: f32) -> Option<Bytes> {
    let limit = (body.len() as f64 * f64::from(max_ratio)) as usize;
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(limit.min(body.len() / 2) + 64),
        flate2::Compression::new(level),
    );
    encoder.write_all(body).ok()?;
    let mut compressed = encoder.finish().ok()?;
    if compressed.len() > limit || compressed.len() < MIN_MEMBER {
        return None;
    }
    let mut crc = flate2::Crc::new();
    crc.update(&compressed[HEADER..compressed.len() - TRAILER]);
    compressed[4..8].copy_from_slice(&crc.sum().to_le_bytes());
    Some(Bytes::from(compressed))
}

/// What names a stored member's bytes (see [`compress`]).
pub(crate) fn member_id(stored: &[u8]) -> u32 {
    stored
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Whether `stored` can be a gzip member that decompresses to `decoded_len`
/// bytes: the magic bytes and deflate method up front, and the length the
/// trailer gives (the decoded length modulo 2^32). Checked when an entry is
/// read, before anything is served from it; the stream itself is checked
/// as it is decompressed.
pub(crate) fn plausible(stored: &[u8], decoded_len: u64) -> bool {
    if stored.len() < MIN_MEMBER || stored[..3] != [0x1f, 0x8b, 8] {
        return false;
    }
    let trailer: [u8; 4] = stored[stored.len() - 4..].try_into().unwrap_or_default();
    u32::from_le_bytes(trailer) == decoded_len as u32
}

/// The whole of a stored body, decompressed; `None` when it is not a gzip
/// member of exactly `decoded_len` bytes (it never reads more than that,
/// plus one byte to tell).
pub(crate) fn decompress(stored: &Bytes, decoded_len: u64) -> Option<Bytes> {
    let mut out = Vec::with_capacity(usize::try_from(decoded_len).ok()?);
    let mut decoder = GzDecoder::new(stored.clone().reader()).take(decoded_len + 1);
    decoder.read_to_end(&mut out).ok()?;
    let whole =
        out.len() as u64 == decoded_len && !decoder.get_ref().get_ref().get_ref().has_remaining();
    whole.then(|| Bytes::from(out))
}

/// A stored body decompressed chunk by chunk, never past the decoded length
/// its entry gives.
pub(crate) struct Gunzip {
    decoder: GzDecoder<Reader<Bytes>>,
    /// Bytes still to come.
    left: u64,
    /// The end of the member has been checked.
    checked: bool,
}

impl std::fmt::Debug for Gunzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gunzip").field("left", &self.left).finish()
    }
}

/// Why a stored body stopped decompressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// Not a valid gzip member, or its checksum does not match.
    Corrupt,
    /// It decompresses to more, or less, than its entry says.
    Length,
}

/// Reports a stored body that stopped decompressing while it was sent.
pub(crate) fn broken(why: Broken, left: u64) {
    crate::metrics::corrupt_body();
    tracing::warn!(
        ?why,
        left,
        "a stored gzip body did not decompress to its length: the response was cut short"
    );
}

impl Gunzip {
    pub(crate) fn new(stored: Bytes, decoded_len: u64) -> Self {
        Self {
            decoder: GzDecoder::new(stored.reader()),
            left: decoded_len,
            checked: false,
        }
    }

    /// Bytes still to come.
    pub(crate) fn left(&self) -> u64 {
        self.left
    }

    /// The next chunk; `Ok(None)` after the last. The last chunk is handed
    /// out only once the member has been read to its end and checked (its
    /// checksum and length, and nothing stored after it): a client is never
    /// sent all the bytes it was promised from a member that turns out bad.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Bytes>, Broken> {
        if self.left == 0 {
            if !self.checked {
                self.check_end()?;
            }
            return Ok(None);
        }
        let want = usize::try_from(self.left).unwrap_or(CHUNK).min(CHUNK);
        let mut chunk = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            match self.decoder.read(&mut chunk[filled..]) {
                Ok(0) => return Err(Broken::Length),
                Ok(n) => filled += n,
                Err(_) => return Err(Broken::Corrupt),
            }
        }
        self.left -= filled as u64;
        if self.left == 0 {
            self.check_end()?;
        }
        Ok(Some(chunk.freeze()))
    }

    /// At the decoded length: the member must end here (one more read gives
    /// nothing, which makes the decoder check the trailer) and be the last
    /// thing stored.
    fn check_end(&mut self) -> Result<(), Broken> {
        let mut probe = [0u8; 1];
        match self.decoder.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => return Err(Broken::Length),
            Err(_) => return Err(Broken::Corrupt),
        }
        if self.decoder.get_ref().get_ref().has_remaining() {
            return Err(Broken::Length);
        }
        self.checked = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(len: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0;
        while s.len() < len {
            s.push_str(&format!(
                r#"{{"id":{i},"name":"item {i}","price":{}.99}},"#,
                i % 97
            ));
            i += 1;
        }
        s.truncate(len);
        s.into_bytes()
    }

    fn all(mut g: Gunzip) -> Result<Vec<u8>, Broken> {
        let mut out = Vec::new();
        while let Some(chunk) = g.next_chunk()? {
            assert!(chunk.len() <= CHUNK);
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    #[test]
    fn a_compressed_body_streams_back_to_the_same_bytes() {
        let body = json(100_000);
        let stored = compress(&body, 6, 0.9).expect("JSON shrinks");
        assert!(stored.len() * 4 < body.len());
        assert!(plausible(&stored, body.len() as u64));
        assert_eq!(
            all(Gunzip::new(stored.clone(), body.len() as u64)).unwrap(),
            body
        );
        assert_eq!(decompress(&stored, body.len() as u64).unwrap(), body);
    }

    #[test]
    fn a_body_that_does_not_shrink_enough_is_not_compressed() {
        // Bytes with no repetition: gzip only adds its framing.
        let mut x = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(compress(&noise, 6, 0.9).is_none());
        let text = json(4096);
        assert!(compress(&text, 6, 0.9).is_some());
        // A ratio no compression reaches.
        assert!(compress(&text, 6, 0.01).is_none());
    }

    #[test]
    fn a_body_longer_or_shorter_than_its_entry_says_is_refused() {
        let body = json(50_000);
        let stored = compress(&body, 1, 1.0).unwrap();
        let n = body.len() as u64;
        // The decoded length names the bytes a client is promised: more
        // (a bomb) or less is an error, and never more than was promised
        // is produced.
        assert_eq!(all(Gunzip::new(stored.clone(), n - 1)), Err(Broken::Length));
        assert_eq!(all(Gunzip::new(stored.clone(), n + 1)), Err(Broken::Length));
        assert_eq!(decompress(&stored, n - 1), None);
        assert_eq!(decompress(&stored, n + 1), None);
        assert!(!plausible(&stored, n + 1));
    }

    #[test]
    fn a_corrupt_stream_is_an_error_not_a_panic() {
        let body = json(20_000);
        let stored = compress(&body, 6, 1.0).unwrap();
        let mut bad = stored.to_vec();
        let middle = bad.len() / 2;
        bad[middle] ^= 0xff;
        let bad = Bytes::from(bad);
        assert!(all(Gunzip::new(bad.clone(), body.len() as u64)).is_err());
        assert_eq!(decompress(&bad, body.len() as u64), None);
        // A flipped byte in the checksum.
        let mut crc = stored.to_vec();
        let at = crc.len() - 8;
        crc[at] ^= 1;
        let crc = Bytes::from(crc);
        assert_eq!(
            all(Gunzip::new(crc, body.len() as u64)),
            Err(Broken::Corrupt)
        );
        assert!(!plausible(b"not gzip at all, just text", 5));
    }
}
