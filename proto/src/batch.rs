//! The record batch: how producers pack records and how the broker stores them.
//!
//! A batch is one blob: a fixed 26-byte header followed by the records. The broker checks the whole
//! batch once on produce ([`validate`]: header, checksum, and that the body holds exactly the records
//! the header counts), but never copies or re-encodes it: the same bytes go from the producer to the
//! log to the consumer. Offsets are not in the blob; the broker assigns the batch a base offset when
//! it is committed and the batch holds `[base, base + count)`.
//!
//! Layout (little endian):
//! ```text
//! magic u8 | flags u8 | count u32 | first_ts i64 | max_ts i64 | crc32(body) u32 | body
//! record := varint(key_len + 1, 0 = no key) key | varint(value_len) value
//!           | zigzag varint(ts - first_ts) | varint(n_headers) (varint len, name, varint len, value)*
//! ```

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::kafka_batch;
pub use crate::record::{BatchError, Record};

/// The only batch format version so far.
pub const MAGIC: u8 = 1;
/// Size of the fixed header in front of every batch.
pub const HEADER_LEN: usize = 26;
/// Size of the smallest possible record (no key, empty value, no headers: four one-byte varints);
/// decoders never reserve room for more records than the remaining bytes could hold at this size.
pub const MIN_RECORD_LEN: usize = 4;
/// Size of the smallest possible record header (two one-byte length varints).
const MIN_HEADER_LEN: usize = 2;

/// The fixed-size part of a batch, which is all the broker stores about it besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Number of records in the batch.
    pub count: u32,
    /// Timestamp of the first record.
    pub first_timestamp_ms: i64,
    /// Largest timestamp of any record (drives time-based retention).
    pub max_timestamp_ms: i64,
    /// CRC32 of the body.
    pub crc: u32,
}

impl BatchHeader {
    /// Reads the header and verifies the body's checksum, without reading any record.
    ///
    /// The checksum only shows the bytes arrived as the producer sent them, not that they are well
    /// formed: batches from the network go through [`validate`] instead.
    pub fn parse(batch: &[u8]) -> Result<BatchHeader, BatchError> {
        if batch.first() == Some(&kafka_batch::TAG) {
            return kafka_batch::parse_header(&batch[1..]).map(BatchHeader::from);
        }
        let Some((fixed, body)) = batch.split_first_chunk::<HEADER_LEN>() else {
            return Err(BatchError::TooShort {
                len: batch.len(),
                header: HEADER_LEN,
            });
        };
        if fixed[0] != MAGIC {
            return Err(BatchError::BadMagic(fixed[0]));
        }
        if fixed[1] != 0 {
            return Err(BatchError::UnknownFlags(fixed[1]));
        }
        let count = u32::from_le_bytes([fixed[2], fixed[3], fixed[4], fixed[5]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&fixed[6..14]);
        let first_timestamp_ms = i64::from_le_bytes(ts);
        ts.copy_from_slice(&fixed[14..22]);
        let max_timestamp_ms = i64::from_le_bytes(ts);
        let crc = u32::from_le_bytes([fixed[22], fixed[23], fixed[24], fixed[25]]);
        let actual = crc32fast::hash(body);
        if actual != crc {
            return Err(BatchError::BadChecksum {
                expected: crc,
                actual,
            });
        }
        if count == 0 {
            return Err(BatchError::Empty);
        }
        Ok(BatchHeader {
            count,
            first_timestamp_ms,
            max_timestamp_ms,
            crc,
        })
    }
}

impl From<kafka_batch::KafkaHeader> for BatchHeader {
    fn from(h: kafka_batch::KafkaHeader) -> BatchHeader {
        BatchHeader {
            count: h.count,
            first_timestamp_ms: h.base_timestamp_ms,
            max_timestamp_ms: h.max_timestamp_ms,
            crc: h.crc,
        }
    }
}

/// Packs records into one batch blob.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    body: BytesMut,
    count: u32,
    first_ts: Option<i64>,
    max_ts: i64,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `bytes` of encoded records.
    pub fn with_capacity(bytes: usize) -> Self {
        BatchBuilder {
            body: BytesMut::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Appends a record with no headers.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) {
        self.push_with_headers(key, value, timestamp_ms, &[]);
    }

    /// Appends a record.
    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        headers: &[(&[u8], &[u8])],
    ) {
        let first = *self.first_ts.get_or_insert(timestamp_ms);
        if self.count == 0 || timestamp_ms > self.max_ts {
            self.max_ts = timestamp_ms;
        }
        match key {
            Some(k) => {
                put_varint(&mut self.body, k.len() as u64 + 1);
                self.body.put_slice(k);
            }
            None => put_varint(&mut self.body, 0),
        }
        put_varint(&mut self.body, value.len() as u64);
        self.body.put_slice(value);
        put_varint(&mut self.body, zigzag(timestamp_ms.wrapping_sub(first)));
        put_varint(&mut self.body, headers.len() as u64);
        for (name, val) in headers {
            put_varint(&mut self.body, name.len() as u64);
            self.body.put_slice(name);
            put_varint(&mut self.body, val.len() as u64);
            self.body.put_slice(val);
        }
        self.count += 1;
    }

    /// Number of records so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the encoded records so far, without the header.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Seals the batch into its final blob.
    pub fn finish(self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        out.put_u8(MAGIC);
        out.put_u8(0);
        out.put_u32_le(self.count);
        out.put_i64_le(self.first_ts.unwrap_or(0));
        out.put_i64_le(self.max_ts);
        out.put_u32_le(crc32fast::hash(&self.body));
        out.put_slice(&self.body);
        out.freeze()
    }
}

/// Checks a whole batch as it arrives from a producer, without copying it or allocating: header,
/// checksum, every record within the body, the record count, no trailing bytes, and timestamps
/// that agree with the header.
///
/// A batch that passes is safe to store: every consumer can [`decode`] it, and its header's count
/// and largest timestamp (which the broker turns into offsets and retention) are the records'.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    if batch.first() == Some(&kafka_batch::TAG) {
        return kafka_batch::validate(&batch[1..]).map(BatchHeader::from);
    }
    let header = BatchHeader::parse(batch)?;
    walk(batch, &header, &mut ())?;
    Ok(header)
}

/// Decodes every record of a batch (consumers do this; the broker only validates). Keys, values
/// and headers share the batch's memory rather than being copied.
pub fn decode(batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    if batch.first() == Some(&kafka_batch::TAG) {
        return kafka_batch::decode(&batch.slice(1..));
    }
    let header = BatchHeader::parse(batch)?;
    // The count comes from the wire: reserve no more records than the body could hold.
    let fits = batch.len().saturating_sub(HEADER_LEN) / MIN_RECORD_LEN;
    let mut decoder = Decoder {
        batch,
        records: Vec::with_capacity((header.count as usize).min(fits)),
        headers: Vec::new(),
    };
    walk(batch, &header, &mut decoder)?;
    Ok(decoder.records)
}

/// Where one record's key and value lie in its batch, found without copying.
struct RawRecord {
    key: Option<Range<usize>>,
    value: Range<usize>,
    timestamp_ms: i64,
}

/// What [`walk`] hands each part of a record to, in batch order.
trait Visit {
    /// A header of the record being read; its record follows once all its headers are read.
    fn header(&mut self, name: Range<usize>, value: Range<usize>);
    /// A whole record, after its headers.
    fn record(&mut self, raw: RawRecord);
}

/// Validation only looks; nothing is kept.
impl Visit for () {
    fn header(&mut self, _: Range<usize>, _: Range<usize>) {}
    fn record(&mut self, _: RawRecord) {}
}

/// Builds records that share the batch's memory.
struct Decoder<'a> {
    batch: &'a Bytes,
    records: Vec<Record>,
    headers: Vec<(Bytes, Bytes)>,
}

impl Visit for Decoder<'_> {
    fn header(&mut self, name: Range<usize>, value: Range<usize>) {
        self.headers
            .push((self.batch.slice(name), self.batch.slice(value)));
    }

    fn record(&mut self, raw: RawRecord) {
        self.records.push(Record {
            key: raw.key.map(|k| self.batch.slice(k)),
            value: self.batch.slice(raw.value),
            timestamp_ms: raw.timestamp_ms,
            headers: std::mem::take(&mut self.headers),
        });
    }
}

/// Reads every record of a batch whose header and checksum were already checked, handing each
/// part to `visit`; checks the count, trailing bytes and timestamps on the way.
///
/// One pass that reads only the varints and steps over keys, values and headers, so its cost is
/// per record rather than per byte, and it allocates nothing of its own.
fn walk(batch: &[u8], header: &BatchHeader, visit: &mut impl Visit) -> Result<(), BatchError> {
    let mut cur = Cursor {
        buf: batch,
        pos: HEADER_LEN,
    };
    let mut max_ts = i64::MIN;
    for index in 0..header.count {
        if cur.remaining() == 0 {
            return Err(BatchError::CountMismatch {
                declared: header.count,
                found: index,
            });
        }
        let at = cur.pos;
        let raw = read_record(&mut cur, header.first_timestamp_ms, visit)
            .map_err(|problem| BatchError::BadRecord { index, at, problem })?;
        if index == 0 && raw.timestamp_ms != header.first_timestamp_ms {
            return Err(BatchError::FirstTimestamp {
                header: header.first_timestamp_ms,
                record: raw.timestamp_ms,
            });
        }
        max_ts = max_ts.max(raw.timestamp_ms);
        visit.record(raw);
    }
    if cur.remaining() != 0 {
        return Err(BatchError::TrailingBytes {
            count: header.count,
            extra: cur.remaining(),
        });
    }
    if max_ts != header.max_timestamp_ms {
        return Err(BatchError::MaxTimestamp {
            header: header.max_timestamp_ms,
            records: max_ts,
        });
    }
    Ok(())
}

/// Reads one record at the cursor, leaving the cursor after it; on failure says what is wrong.
fn read_record(
    cur: &mut Cursor<'_>,
    first_ts: i64,
    visit: &mut impl Visit,
) -> Result<RawRecord, &'static str> {
    let key = match cur.varint(Field::KeyLen)?.checked_sub(1) {
        None => None,
        Some(len) => Some(cur.skip(len, Field::Key)?),
    };
    let value_len = cur.varint(Field::ValueLen)?;
    let value = cur.skip(value_len, Field::Value)?;
    let delta = unzigzag(cur.varint(Field::TimestampDelta)?);
    let n_headers = cur.varint(Field::HeaderCount)?;
    // Checked before the loop so a huge count fails at once instead of after the rest is read.
    if n_headers > (cur.remaining() / MIN_HEADER_LEN) as u64 {
        return Err("header count is more than the rest of the batch can hold");
    }
    for _ in 0..n_headers {
        let n = cur.varint(Field::HeaderNameLen)?;
        let name = cur.skip(n, Field::HeaderName)?;
        let v = cur.varint(Field::HeaderValueLen)?;
        let value = cur.skip(v, Field::HeaderValue)?;
        visit.header(name, value);
    }
    Ok(RawRecord {
        key,
        value,
        // Wrapping, as the builder encodes the delta wrapping: any two i64 timestamps round-trip.
        timestamp_ms: first_ts.wrapping_add(delta),
    })
}

/// The part of a record being read, so an error can name it.
#[derive(Clone, Copy)]
enum Field {
    KeyLen,
    Key,
    ValueLen,
    Value,
    TimestampDelta,
    HeaderCount,
    HeaderNameLen,
    HeaderName,
    HeaderValueLen,
    HeaderValue,
}

impl Field {
    /// The error for this part running past the end of the batch.
    fn truncated(self) -> &'static str {
        match self {
            Field::KeyLen => "key length runs past the end of the batch",
            Field::Key => "key runs past the end of the batch",
            Field::ValueLen => "value length runs past the end of the batch",
            Field::Value => "value runs past the end of the batch",
            Field::TimestampDelta => "timestamp delta runs past the end of the batch",
            Field::HeaderCount => "header count runs past the end of the batch",
            Field::HeaderNameLen => "header name length runs past the end of the batch",
            Field::HeaderName => "header name runs past the end of the batch",
            Field::HeaderValueLen => "header value length runs past the end of the batch",
            Field::HeaderValue => "header value runs past the end of the batch",
        }
    }

    /// The error for this part's varint not fitting in 64 bits.
    fn overflow(self) -> &'static str {
        match self {
            Field::KeyLen => "key length varint overflows 64 bits",
            Field::ValueLen => "value length varint overflows 64 bits",
            Field::TimestampDelta => "timestamp delta varint overflows 64 bits",
            Field::HeaderCount => "header count varint overflows 64 bits",
            Field::HeaderNameLen => "header name length varint overflows 64 bits",
            _ => "header value length varint overflows 64 bits",
        }
    }
}

/// A read position in a batch that never reads past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Reads an unsigned LEB128 varint of at most 10 bytes whose value fits in 64 bits.
    fn varint(&mut self, field: Field) -> Result<u64, &'static str> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(field.truncated());
            };
            self.pos += 1;
            // The tenth byte carries only bit 63; anything more would be silently dropped.
            if shift == 63 && b > 1 {
                return Err(field.overflow());
            }
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(field.overflow())
    }

    /// Steps over `len` bytes, returning where they lie.
    fn skip(&mut self, len: u64, field: Field) -> Result<Range<usize>, &'static str> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|end| *end <= self.buf.len())
            .ok_or(field.truncated())?;
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A batch with the given header fields and body and a correct checksum, so that only its
    /// structure can be wrong.
    fn seal(count: u32, first_ts: i64, max_ts: i64, body: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
        out.put_u8(MAGIC);
        out.put_u8(0);
        out.put_u32_le(count);
        out.put_i64_le(first_ts);
        out.put_i64_le(max_ts);
        out.put_u32_le(crc32fast::hash(body));
        out.put_slice(body);
        out.freeze()
    }

    /// Recomputes the checksum of whatever bytes are there, so mutations reach the record checks.
    fn reseal(mut blob: Vec<u8>) -> Bytes {
        if blob.len() >= HEADER_LEN {
            let crc = crc32fast::hash(&blob[HEADER_LEN..]);
            blob[22..26].copy_from_slice(&crc.to_le_bytes());
        }
        Bytes::from(blob)
    }

    /// The body of a batch holding one record with key "k", value "value" and timestamp 7.
    fn one_record_body() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(Some(b"k"), b"value", 7);
        b.finish()[HEADER_LEN..].to_vec()
    }

    /// Both readers refuse `blob` with `want`.
    fn refused(blob: &Bytes, want: BatchError) {
        assert_eq!(validate(blob), Err(want.clone()));
        assert_eq!(decode(blob), Err(want));
    }

    #[test]
    fn header_reports_count_and_timestamps() {
        let mut b = BatchBuilder::new();
        b.push(Some(b"k"), b"v1", 100);
        b.push(None, b"v2", 50);
        b.push(None, b"v3", 300);
        let blob = b.finish();
        let h = BatchHeader::parse(&blob).unwrap();
        assert_eq!(h.count, 3);
        assert_eq!(h.first_timestamp_ms, 100);
        assert_eq!(h.max_timestamp_ms, 300);
        assert_eq!(validate(&blob), Ok(h));
    }

    #[test]
    fn corrupted_body_is_rejected() {
        let mut b = BatchBuilder::new();
        b.push(None, b"hello", 1);
        let mut blob = b.finish().to_vec();
        let last = blob.len() - 1;
        blob[last] ^= 0xff;
        assert!(matches!(
            BatchHeader::parse(&blob),
            Err(BatchError::BadChecksum { .. })
        ));
        assert_eq!(
            BatchHeader::parse(&blob[..10]),
            Err(BatchError::TooShort {
                len: 10,
                header: HEADER_LEN
            })
        );
    }

    #[test]
    fn empty_batch_is_rejected() {
        let blob = BatchBuilder::new().finish();
        assert_eq!(BatchHeader::parse(&blob), Err(BatchError::Empty));
        assert_eq!(validate(&blob), Err(BatchError::Empty));
    }

    #[test]
    fn a_count_beyond_the_records_present_is_refused() {
        let blob = seal(1_000_000_000, 7, 7, &one_record_body());
        refused(
            &blob,
            BatchError::CountMismatch {
                declared: 1_000_000_000,
                found: 1,
            },
        );
        let msg = validate(&blob).unwrap_err().to_string();
        assert!(
            msg.contains("1000000000") && msg.contains("only 1"),
            "{msg}"
        );
    }

    #[test]
    fn a_truncated_record_is_refused() {
        let mut b = BatchBuilder::new();
        b.push(None, b"first", 7);
        b.push(None, b"second value", 7);
        let full = b.finish();
        let second_at = HEADER_LEN + 1 + 1 + 5 + 1 + 1;
        // Cut in the middle of the second value.
        let blob = seal(2, 7, 7, &full[HEADER_LEN..full.len() - 4]);
        refused(
            &blob,
            BatchError::BadRecord {
                index: 1,
                at: second_at,
                problem: "value runs past the end of the batch",
            },
        );
        // Cut right after the second record's key marker.
        let blob = seal(2, 7, 7, &full[HEADER_LEN..second_at + 1]);
        refused(
            &blob,
            BatchError::BadRecord {
                index: 1,
                at: second_at,
                problem: "value length runs past the end of the batch",
            },
        );
        // Cut after the value, before the timestamp delta.
        let blob = seal(2, 7, 7, &full[HEADER_LEN..full.len() - 2]);
        refused(
            &blob,
            BatchError::BadRecord {
                index: 1,
                at: second_at,
                problem: "timestamp delta runs past the end of the batch",
            },
        );
    }

    #[test]
    fn an_overlong_or_overflowing_varint_is_refused() {
        // Eleven continuation bytes: no varint of a u64 is that long.
        let blob = seal(1, 0, 0, &[0xff; 11]);
        refused(
            &blob,
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "key length varint overflows 64 bits",
            },
        );
        // Ten bytes whose last holds bits past bit 63.
        let mut body = vec![0x80; 9];
        body.push(0x02);
        body.extend_from_slice(&[0, 0, 0, 0]);
        let blob = seal(1, 0, 0, &body);
        refused(
            &blob,
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "key length varint overflows 64 bits",
            },
        );
        // A varint still continuing at the end of the batch.
        let blob = seal(1, 0, 0, &[0x00, 0x80]);
        refused(
            &blob,
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "value length runs past the end of the batch",
            },
        );
    }

    #[test]
    fn a_length_beyond_the_body_is_refused() {
        // A 1,000-byte key in a 4-byte body.
        let mut body = BytesMut::new();
        put_varint(&mut body, 1_001);
        body.put_slice(b"ab");
        refused(
            &seal(1, 0, 0, &body),
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "key runs past the end of the batch",
            },
        );
        // The largest value length a varint can carry.
        let mut body = BytesMut::new();
        put_varint(&mut body, 0);
        put_varint(&mut body, u64::MAX);
        refused(
            &seal(1, 0, 0, &body),
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "value runs past the end of the batch",
            },
        );
        // A header count no body could hold.
        let mut body = BytesMut::new();
        body.put_slice(&[0, 0, 0]);
        put_varint(&mut body, u64::MAX);
        refused(
            &seal(1, 0, 0, &body),
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "header count is more than the rest of the batch can hold",
            },
        );
        // A header value longer than what is left.
        let mut body = BytesMut::new();
        body.put_slice(&[0, 0, 0, 1, 1, b'n', 9, b'v']);
        refused(
            &seal(1, 0, 0, &body),
            BatchError::BadRecord {
                index: 0,
                at: HEADER_LEN,
                problem: "header value runs past the end of the batch",
            },
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = one_record_body();
        body.push(0);
        refused(
            &seal(1, 7, 7, &body),
            BatchError::TrailingBytes { count: 1, extra: 1 },
        );
        // A whole extra record the count leaves out is trailing bytes too.
        let mut body = one_record_body();
        body.extend_from_slice(&one_record_body());
        refused(
            &seal(1, 7, 7, &body),
            BatchError::TrailingBytes {
                count: 1,
                extra: body.len() / 2,
            },
        );
    }

    #[test]
    fn timestamps_must_agree_with_the_header() {
        // Retention reads the header's largest timestamp: a batch may not claim another.
        refused(
            &seal(1, 7, i64::MAX, &one_record_body()),
            BatchError::MaxTimestamp {
                header: i64::MAX,
                records: 7,
            },
        );
        // The first record's delta must be 0: the header's first timestamp is its.
        let mut body = BytesMut::new();
        body.put_slice(&[0, 0]);
        put_varint(&mut body, zigzag(5));
        body.put_u8(0);
        refused(
            &seal(1, 7, 12, &body),
            BatchError::FirstTimestamp {
                header: 7,
                record: 12,
            },
        );
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut blob = seal(1, 7, 7, &one_record_body()).to_vec();
        blob[1] = 0x04;
        refused(&Bytes::from(blob), BatchError::UnknownFlags(0x04));
    }

    #[test]
    fn decoding_never_reserves_more_than_the_body_holds() {
        // Before any record is read the decoder sizes its output: a count of u32::MAX records
        // must not turn into hundreds of gigabytes reserved.
        let blob = seal(u32::MAX, 7, 7, &one_record_body());
        assert!(matches!(
            decode(&blob),
            Err(BatchError::CountMismatch { found: 1, .. })
        ));
    }

    /// Records as the round-trip property generates them.
    type Generated = Vec<(Option<Vec<u8>>, Vec<u8>, i64, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn arb_records() -> impl Strategy<Value = Generated> {
        proptest::collection::vec(
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::collection::vec(any::<u8>(), 0..200),
                any::<i64>(),
                proptest::collection::vec(
                    (
                        proptest::collection::vec(any::<u8>(), 0..8),
                        proptest::collection::vec(any::<u8>(), 0..8),
                    ),
                    0..3,
                ),
            ),
            1..50,
        )
    }

    fn build(records: &Generated) -> Bytes {
        let mut b = BatchBuilder::new();
        for (k, v, ts, hs) in records {
            let hs: Vec<(&[u8], &[u8])> = hs
                .iter()
                .map(|(a, b)| (a.as_slice(), b.as_slice()))
                .collect();
            b.push_with_headers(k.as_deref(), v, *ts, &hs);
        }
        b.finish()
    }

    /// The validator and the decoder agree on every input, and an accepted batch decodes to
    /// exactly the records its header counts.
    fn readers_agree(blob: &Bytes) -> Result<(), TestCaseError> {
        let validated = validate(blob);
        let decoded = decode(blob);
        match (&validated, &decoded) {
            (Ok(h), Ok(records)) => {
                prop_assert_eq!(records.len(), h.count as usize);
                let max = records.iter().map(|r| r.timestamp_ms).max();
                prop_assert_eq!(max, Some(h.max_timestamp_ms));
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => {
                return Err(TestCaseError::fail(format!(
                    "validate {validated:?} but decode {decoded:?}"
                )))
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn records_round_trip(records in arb_records()) {
            let blob = build(&records);
            prop_assert_eq!(validate(&blob), BatchHeader::parse(&blob));
            let back = decode(&blob).unwrap();
            prop_assert_eq!(back.len(), records.len());
            for (got, (k, v, ts, hs)) in back.iter().zip(records.iter()) {
                prop_assert_eq!(got.key.as_deref(), k.as_deref());
                prop_assert_eq!(&got.value[..], &v[..]);
                prop_assert_eq!(got.timestamp_ms, *ts);
                let got_headers: Vec<(&[u8], &[u8])> =
                    got.headers.iter().map(|(a, b)| (&a[..], &b[..])).collect();
                let want_headers: Vec<(&[u8], &[u8])> =
                    hs.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
                prop_assert_eq!(got_headers, want_headers);
            }
        }

        #[test]
        fn random_bytes_are_refused_not_panicked_on(
            count in prop_oneof![Just(1u32), 1u32..64, any::<u32>()],
            first_ts in prop_oneof![Just(0i64), any::<i64>()],
            max_ts in prop_oneof![Just(0i64), any::<i64>()],
            body in proptest::collection::vec(any::<u8>(), 0..300),
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            readers_agree(&seal(count, first_ts, max_ts, &body))?;
            readers_agree(&Bytes::from(raw.clone()))?;
            readers_agree(&reseal(raw))?;
        }

        #[test]
        fn mutated_batches_are_refused_not_panicked_on(
            records in arb_records(),
            flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..4),
            cut in proptest::option::of(any::<usize>()),
            extra in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut blob = build(&records).to_vec();
            let len = blob.len();
            for (at, x) in flips {
                blob[at % len] ^= x;
            }
            if let Some(cut) = cut {
                blob.truncate(cut % (len + 1));
            }
            blob.extend_from_slice(&extra);
            // As received, most mutations fail the checksum; resealed, they reach the records.
            readers_agree(&Bytes::from(blob.clone()))?;
            readers_agree(&reseal(blob))?;
        }
    }
}
