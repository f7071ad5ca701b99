//! Kafka's record batch (format v2), stored as it came from a Kafka producer.
//!
//! A batch produced through the Kafka listener is kept as one blob, `TAG | kafka batch`, so the
//! broker neither decodes nor re-encodes its records: the leader checks it once (checksum, count,
//! every record, bounded decompression), the state machine writes the offset and leader epoch into
//! its header when it is appended (both lie outside Kafka's checksum), and a Kafka consumer gets
//! the stored bytes back unchanged. Weir's own readers decode it into [`Record`]s like a native
//! batch; native batches are turned into uncompressed Kafka batches when a Kafka consumer reads
//! them ([`encode`]).
//!
//! Layout of the Kafka part (big endian): `base_offset i64 | batch_length i32 | leader_epoch i32 |
//! magic i8 = 2 | crc32c u32 | attributes i16 | last_offset_delta i32 | base_ts i64 | max_ts i64 |
//! producer_id i64 | producer_epoch i16 | base_sequence i32 | count i32 | records`, the checksum
//! covering everything from `attributes` on.

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

use crate::record::{BatchError, Record};

/// First byte of a stored blob that holds a Kafka batch (native batches start with 1).
pub const TAG: u8 = 2;
/// Size of a Kafka batch's header, up to its first record.
pub const HEADER_LEN: usize = 61;
/// Bytes of a Kafka batch before its `batch_length` counts (base offset and the length itself).
const LOG_OVERHEAD: usize = 12;
/// Where the checksummed part begins.
const CRC_START: usize = 21;
/// Largest size a compressed batch may decompress to: a batch is at most 8 MiB on the wire, and a
/// small batch must not be able to make the broker allocate without bound.
pub const MAX_DECOMPRESSED: usize = 64 << 20;
/// Smallest possible Kafka record: length, attributes, timestamp delta, offset delta, key length,
/// value length, header count (one byte each).
const MIN_RECORD_LEN: usize = 7;

/// Attribute bits.
const COMPRESSION_MASK: i16 = 0x07;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// How a Kafka batch's records are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
    /// Snappy (Kafka's framing, or a raw block).
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// The header of a Kafka batch, as the broker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaHeader {
    /// Records in the batch.
    pub count: u32,
    /// Timestamp the record timestamps are deltas from.
    pub base_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// The batch's CRC-32C.
    pub crc: u32,
    /// How the records are compressed.
    pub compression: Compression,
    /// Idempotent producer's id (-1: none).
    pub producer_id: i64,
    /// Idempotent producer's epoch.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record (-1: none).
    pub base_sequence: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Reads and checks the header of one Kafka batch (`kb` is exactly the batch): length, format,
/// checksum, no transaction or control batch, a sane record count.
pub fn parse_header(kb: &[u8]) -> Result<KafkaHeader, BatchError> {
    if kb.len() < HEADER_LEN {
        return Err(BatchError::TooShort {
            len: kb.len(),
            header: HEADER_LEN,
        });
    }
    let length = be_i32(kb, 8);
    if length < 0 || length as usize + LOG_OVERHEAD != kb.len() {
        return Err(BatchError::Kafka(format!(
            "batch length field says {length} but {} bytes follow it",
            kb.len() - LOG_OVERHEAD
        )));
    }
    if kb[16] != 2 {
        return Err(BatchError::BadMagic(kb[16]));
    }
    let crc = u32::from_be_bytes([kb[17], kb[18], kb[19], kb[20]]);
    let actual = crc32c::crc32c(&kb[CRC_START..]);
    if crc != actual {
        return Err(BatchError::BadChecksum {
            expected: crc,
            actual,
        });
    }
    let attributes = be_i16(kb, 21);
    if attributes & (TRANSACTIONAL | CONTROL) != 0 {
        return Err(BatchError::Kafka(
            "transactional and control batches are not supported".into(),
        ));
    }
    let compression = match attributes & COMPRESSION_MASK {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => {
            return Err(BatchError::Kafka(format!(
                "unknown compression codec {other}"
            )))
        }
    };
    let count = be_i32(kb, 57);
    if count <= 0 {
        return Err(BatchError::Empty);
    }
    let last_offset_delta = be_i32(kb, 23);
    if last_offset_delta != count - 1 {
        return Err(BatchError::Kafka(format!(
            "last offset delta {last_offset_delta} does not match {count} records"
        )));
    }
    Ok(KafkaHeader {
        count: count as u32,
        base_timestamp_ms: be_i64(kb, 27),
        max_timestamp_ms: be_i64(kb, 35),
        crc,
        compression,
        producer_id: be_i64(kb, 43),
        producer_epoch: be_i16(kb, 51),
        base_sequence: be_i32(kb, 53),
    })
}

/// The records part of a compressed batch, decompressed, never larger than [`MAX_DECOMPRESSED`];
/// None when the records are not compressed (they are then read where they lie).
fn decompressed(kb: &[u8], header: &KafkaHeader) -> Result<Option<Vec<u8>>, BatchError> {
    let raw = &kb[HEADER_LEN..];
    let bad = |e: String| BatchError::Kafka(format!("cannot decompress records: {e}"));
    let limit = MAX_DECOMPRESSED as u64 + 1;
    let mut out = Vec::new();
    match header.compression {
        Compression::None => return Ok(None),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| bad(e.to_string()))?;
        }
        Compression::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| bad(e.to_string()))?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(raw)
                .map_err(|e| bad(e.to_string()))?
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| bad(e.to_string()))?;
        }
        Compression::Snappy => out = snappy(raw).map_err(bad)?,
    }
    if out.len() > MAX_DECOMPRESSED {
        return Err(BatchError::Kafka(format!(
            "records decompress to more than {MAX_DECOMPRESSED} bytes"
        )));
    }
    Ok(Some(out))
}

/// Snappy as Kafka clients write it: the Java client's framing (a magic header, then length-prefixed
/// blocks) or, from some clients, one raw block.
fn snappy(raw: &[u8]) -> Result<Vec<u8>, String> {
    const MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(b).map_err(|e| e.to_string())?;
        if out.len() + n > MAX_DECOMPRESSED {
            return Err(format!("more than {MAX_DECOMPRESSED} bytes"));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[start..])
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let mut out = Vec::new();
    if !raw.starts_with(MAGIC) {
        block(raw, &mut out)?;
        return Ok(out);
    }
    // Magic (8 bytes), version and compatible version (4 each).
    let mut pos = 16;
    while pos < raw.len() {
        let len = raw
            .get(pos..pos + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("truncated block length")?;
        pos += 4;
        let b = raw.get(pos..pos + len).ok_or("truncated block")?;
        block(b, &mut out)?;
        pos += len;
    }
    Ok(out)
}

/// Where one record lies in the (decompressed) records bytes.
struct RawRecord {
    key: Option<std::ops::Range<usize>>,
    value: Option<std::ops::Range<usize>>,
    timestamp_ms: i64,
    headers: Vec<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)>,
}

/// A bounded reader of Kafka's zigzag varints.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn varlong(&mut self) -> Result<i64, &'static str> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("varint runs past the end")?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((out >> 1) as i64) ^ -((out & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn varint(&mut self) -> Result<i32, &'static str> {
        i32::try_from(self.varlong()?).map_err(|_| "varint overflows 32 bits")
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or("record runs past the end")?;
        self.pos += 1;
        Ok(b)
    }

    /// A length-prefixed field; -1 is null.
    fn field(&mut self) -> Result<Option<std::ops::Range<usize>>, &'static str> {
        let len = self.varint()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err("negative field length")
            };
        }
        let end = self
            .pos
            .checked_add(len as usize)
            .filter(|e| *e <= self.buf.len())
            .ok_or("field runs past the end of the record")?;
        let r = self.pos..end;
        self.pos = end;
        Ok(Some(r))
    }
}

/// Reads every record, checking each lies within its length, offset deltas run 0, 1, 2, ... and
/// nothing follows the last; hands each to `f`.
fn walk(
    recs: &[u8],
    header: &KafkaHeader,
    mut f: impl FnMut(RawRecord),
) -> Result<i64, BatchError> {
    if header.count as usize > recs.len() / MIN_RECORD_LEN {
        return Err(BatchError::CountMismatch {
            declared: header.count,
            found: (recs.len() / MIN_RECORD_LEN) as u32,
        });
    }
    let mut cur = Cursor { buf: recs, pos: 0 };
    let mut max_ts = i64::MIN;
    for index in 0..header.count {
        let at = cur.pos;
        let bad = |problem| BatchError::BadRecord { index, at, problem };
        if cur.pos >= recs.len() {
            return Err(BatchError::CountMismatch {
                declared: header.count,
                found: index,
            });
        }
        let len = cur.varint().map_err(bad)?;
        let start = cur.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|e| *e <= recs.len())
            .ok_or_else(|| bad("record length runs past the end of the batch"))?;
        let mut rec = Cursor {
            buf: &recs[..end],
            pos: start,
        };
        rec.byte().map_err(bad)?;
        let ts_delta = rec.varlong().map_err(bad)?;
        let offset_delta = rec.varint().map_err(bad)?;
        if offset_delta as i64 != i64::from(index) {
            return Err(bad("offset deltas are not consecutive"));
        }
        let key = rec.field().map_err(bad)?;
        let value = rec.field().map_err(bad)?;
        let n_headers = rec.varint().map_err(bad)?;
        if n_headers < 0 || n_headers as usize > (end - rec.pos) / 2 {
            return Err(bad("header count does not fit the record"));
        }
        let mut headers = Vec::with_capacity(n_headers as usize);
        for _ in 0..n_headers {
            let name = rec
                .field()
                .map_err(bad)?
                .ok_or_else(|| bad("null header name"))?;
            headers.push((name, rec.field().map_err(bad)?));
        }
        if rec.pos != end {
            return Err(bad("bytes left over inside the record"));
        }
        cur.pos = end;
        let timestamp_ms = header.base_timestamp_ms.wrapping_add(ts_delta);
        max_ts = max_ts.max(timestamp_ms);
        f(RawRecord {
            key,
            value,
            timestamp_ms,
            headers,
        });
    }
    if cur.pos != recs.len() {
        return Err(BatchError::TrailingBytes {
            count: header.count,
            extra: recs.len() - cur.pos,
        });
    }
    Ok(max_ts)
}

/// Checks a whole Kafka batch from a producer: header, checksum, every record (decompressed within
/// [`MAX_DECOMPRESSED`]), count and the largest timestamp the header claims.
pub fn validate(kb: &[u8]) -> Result<KafkaHeader, BatchError> {
    let header = parse_header(kb)?;
    let owned = decompressed(kb, &header)?;
    let recs = owned.as_deref().unwrap_or(&kb[HEADER_LEN..]);
    let max_ts = walk(recs, &header, |_| {})?;
    if max_ts != header.max_timestamp_ms {
        return Err(BatchError::MaxTimestamp {
            header: header.max_timestamp_ms,
            records: max_ts,
        });
    }
    Ok(header)
}

/// Decodes every record of a Kafka batch; uncompressed keys and values share the batch's memory.
/// A null value reads as an empty one.
pub fn decode(kb: &Bytes) -> Result<Vec<Record>, BatchError> {
    let header = parse_header(kb)?;
    let recs = match decompressed(kb, &header)? {
        Some(v) => Bytes::from(v),
        None => kb.slice(HEADER_LEN..),
    };
    let mut out = Vec::with_capacity(header.count as usize);
    walk(&recs, &header, |r| {
        out.push(Record {
            key: r.key.map(|k| recs.slice(k)),
            value: r.value.map(|v| recs.slice(v)).unwrap_or_default(),
            timestamp_ms: r.timestamp_ms,
            headers: r
                .headers
                .into_iter()
                .map(|(n, v)| (recs.slice(n), v.map(|v| recs.slice(v)).unwrap_or_default()))
                .collect(),
        })
    })?;
    Ok(out)
}

/// An idempotent Kafka producer's numbering, as its batch carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaProducer {
    /// The producer's id (from `InitProducerId`).
    pub producer_id: u64,
    /// The producer's epoch.
    pub epoch: u64,
    /// Sequence number of the batch's first record.
    pub base_sequence: u64,
}

/// The idempotent producer of a stored blob holding a Kafka batch (`TAG | batch`), when it has
/// one; None for native batches and Kafka batches without a producer id. Reads the header only.
pub fn producer(blob: &[u8]) -> Option<KafkaProducer> {
    if blob.first() != Some(&TAG) || blob.len() < 1 + HEADER_LEN {
        return None;
    }
    let kb = &blob[1..];
    let id = be_i64(kb, 43);
    let epoch = be_i16(kb, 51);
    let seq = be_i32(kb, 53);
    (id >= 0 && epoch >= 0 && seq >= 0).then_some(KafkaProducer {
        producer_id: id as u64,
        epoch: epoch as u64,
        base_sequence: seq as u64,
    })
}

/// Writes `base_offset` and `leader_epoch` into a Kafka batch's header (neither is checksummed).
pub fn stamp(kb: &mut [u8], base_offset: u64, leader_epoch: i32) {
    if kb.len() >= HEADER_LEN {
        kb[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
        kb[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    }
}

fn put_varlong(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn put_field(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varlong(buf, b.len() as i64);
            buf.put_slice(b);
        }
        None => put_varlong(buf, -1),
    }
}

/// Encodes records as one uncompressed Kafka batch starting at `base_offset` (how a Kafka consumer
/// reads batches that were produced natively).
pub fn encode(base_offset: u64, leader_epoch: i32, records: &[Record]) -> Bytes {
    let base_ts = records.first().map_or(0, |r| r.timestamp_ms);
    let max_ts = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(base_ts);
    let mut body = BytesMut::new();
    let mut rec = BytesMut::new();
    for (i, r) in records.iter().enumerate() {
        rec.clear();
        rec.put_u8(0);
        put_varlong(&mut rec, r.timestamp_ms.wrapping_sub(base_ts));
        put_varlong(&mut rec, i as i64);
        put_field(&mut rec, r.key.as_deref());
        put_field(&mut rec, Some(&r.value));
        put_varlong(&mut rec, r.headers.len() as i64);
        for (n, v) in &r.headers {
            put_field(&mut rec, Some(n));
            put_field(&mut rec, Some(v));
        }
        put_varlong(&mut body, rec.len() as i64);
        body.put_slice(&rec);
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_i64(base_offset as i64);
    out.put_i32((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32);
    out.put_i32(leader_epoch);
    out.put_u8(2);
    out.put_u32(0);
    out.put_i16(0);
    out.put_i32(records.len() as i32 - 1);
    out.put_i64(base_ts);
    out.put_i64(max_ts);
    out.put_i64(-1);
    out.put_i16(-1);
    out.put_i32(-1);
    out.put_i32(records.len() as i32);
    out.put_slice(&body);
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: Option<&str>, value: &str, ts: i64) -> Record {
        Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            timestamp_ms: ts,
            headers: vec![(Bytes::from_static(b"h"), Bytes::from_static(b"v"))],
        }
    }

    #[test]
    fn encoded_batches_validate_and_decode_back() {
        let records = vec![rec(Some("k"), "one", 1000), rec(None, "two", 990)];
        let kb = encode(42, 3, &records);
        let h = validate(&kb).expect("valid");
        assert_eq!((h.count, h.max_timestamp_ms), (2, 1000));
        assert_eq!(decode(&kb).expect("decodes"), records);
        assert_eq!(be_i64(&kb, 0), 42);
    }

    #[test]
    fn compressed_batches_decode() {
        let records = vec![rec(Some("a"), "x", 5), rec(Some("b"), "y", 6)];
        let plain = encode(0, -1, &records);
        let body = &plain[HEADER_LEN..];
        let seal = |codec: i16, compressed: Vec<u8>| {
            let mut kb = BytesMut::from(&plain[..HEADER_LEN]);
            kb.put_slice(&compressed);
            let len = (kb.len() - LOG_OVERHEAD) as i32;
            kb[8..12].copy_from_slice(&len.to_be_bytes());
            kb[21..23].copy_from_slice(&codec.to_be_bytes());
            let crc = crc32c::crc32c(&kb[CRC_START..]);
            kb[17..21].copy_from_slice(&crc.to_be_bytes());
            kb.freeze()
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, body).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let snappy = snap::raw::Encoder::new()
            .compress_vec(body)
            .expect("snappy");
        let lz4 = {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            std::io::Write::write_all(&mut e, body).expect("lz4");
            e.finish().expect("lz4")
        };
        let zstd = zstd::encode_all(body, 1).expect("zstd");
        for (codec, c) in [(1, gz), (2, snappy), (3, lz4), (4, zstd)] {
            let kb = seal(codec, c);
            validate(&kb).unwrap_or_else(|e| panic!("codec {codec}: {e}"));
            assert_eq!(decode(&kb).expect("decodes"), records, "codec {codec}");
        }
    }

    #[test]
    fn a_huge_record_count_is_refused_before_anything_is_reserved() {
        let mut kb = BytesMut::from(&encode(0, -1, &[rec(None, "v", 1)])[..]);
        kb[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        kb[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        let crc = crc32c::crc32c(&kb[CRC_START..]);
        kb[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&kb.freeze()),
            Err(BatchError::CountMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let kb = Bytes::from(bytes);
            let _ = validate(&kb);
            let _ = decode(&kb);
        }

        #[test]
        fn corrupted_batches_are_refused_or_read_consistently(flip in 0usize..120, bit in 0u8..8) {
            let kb = encode(0, -1, &[rec(Some("key"), "value", 7), rec(None, "w", 9)]);
            let mut m = BytesMut::from(&kb[..]);
            let at = flip % m.len();
            m[at] ^= 1 << bit;
            let m = m.freeze();
            if let Ok(h) = validate(&m) {
                prop_assert_eq!(decode(&m).expect("valid decodes").len() as u32, h.count);
            }
        }
    }
}
