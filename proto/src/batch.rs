//! The record batch: how producers pack records and how the broker stores them.
//!
//! A batch is one blob: a fixed 26-byte header followed by the records. The broker reads the header
//! (record count, timestamps) and checks the CRC of the body, but never decodes the records: the
//! same bytes go from the producer to the log to the consumer. Offsets are not in the blob; the broker
//! assigns the batch a base offset when it is committed and the batch holds
//! `[base, base + count)`.
//!
//! Layout (little endian):
//! ```text
//! magic u8 | flags u8 | count u32 | first_ts i64 | max_ts i64 | crc32(body) u32 | body
//! record := varint(key_len + 1, 0 = no key) key | varint(value_len) value
//!           | zigzag varint(ts - first_ts) | varint(n_headers) (varint len, name, varint len, value)*
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// The only batch format version so far.
pub const MAGIC: u8 = 1;
/// Size of the fixed header in front of every batch.
pub const HEADER_LEN: usize = 26;

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("batch has unknown format version {0}")]
    BadMagic(u8),
    #[error("batch checksum mismatch: header says {expected:#010x}, body has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("batch holds no records")]
    Empty,
    #[error("batch is malformed: {0}")]
    Malformed(&'static str),
}

/// One record as producers write it and consumers read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Optional key (used for partitioning by producers).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Free-form headers.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// The fixed-size part of a batch, which is all the broker looks at.
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
    /// Reads the header and verifies the body's checksum, without decoding any record.
    pub fn parse(batch: &[u8]) -> Result<BatchHeader, BatchError> {
        if batch.len() < HEADER_LEN {
            return Err(BatchError::TooShort(batch.len()));
        }
        if batch[0] != MAGIC {
            return Err(BatchError::BadMagic(batch[0]));
        }
        let count = u32::from_le_bytes(batch[2..6].try_into().expect("4 bytes"));
        let first_timestamp_ms = i64::from_le_bytes(batch[6..14].try_into().expect("8 bytes"));
        let max_timestamp_ms = i64::from_le_bytes(batch[14..22].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(batch[22..26].try_into().expect("4 bytes"));
        let actual = crc32fast::hash(&batch[HEADER_LEN..]);
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

/// Decodes every record of a batch (consumers do this; the broker never does).
pub fn decode(batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let mut pos = HEADER_LEN;
    let mut out = Vec::with_capacity(header.count as usize);
    for _ in 0..header.count {
        let key_len = get_varint(batch, &mut pos)?;
        let key = if key_len == 0 {
            None
        } else {
            Some(take(batch, &mut pos, key_len - 1)?)
        };
        let value_len = get_varint(batch, &mut pos)?;
        let value = take(batch, &mut pos, value_len)?;
        let delta = unzigzag(get_varint(batch, &mut pos)?);
        let n_headers = get_varint(batch, &mut pos)?;
        let mut headers = Vec::new();
        for _ in 0..n_headers {
            let n = get_varint(batch, &mut pos)?;
            let name = take(batch, &mut pos, n)?;
            let v = get_varint(batch, &mut pos)?;
            let val = take(batch, &mut pos, v)?;
            headers.push((name, val));
        }
        out.push(Record {
            key,
            value,
            timestamp_ms: header.first_timestamp_ms.wrapping_add(delta),
            headers,
        });
    }
    if pos != batch.len() {
        return Err(BatchError::Malformed(
            "trailing bytes after the last record",
        ));
    }
    Ok(out)
}

fn take(buf: &Bytes, pos: &mut usize, len: u64) -> Result<Bytes, BatchError> {
    let len = usize::try_from(len).map_err(|_| BatchError::Malformed("length overflows"))?;
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or(BatchError::Malformed(
            "record runs past the end of the batch",
        ))?;
    let out = buf.slice(*pos..end);
    *pos = end;
    Ok(out)
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, BatchError> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(BatchError::Malformed(
            "varint runs past the end of the batch",
        ))?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(BatchError::Malformed("varint longer than 10 bytes"))
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
            Err(BatchError::TooShort(10))
        );
    }

    #[test]
    fn empty_batch_is_rejected() {
        let blob = BatchBuilder::new().finish();
        assert_eq!(BatchHeader::parse(&blob), Err(BatchError::Empty));
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(
            (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
             proptest::collection::vec(any::<u8>(), 0..200),
             any::<i64>(),
             proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..8),
                                        proptest::collection::vec(any::<u8>(), 0..8)), 0..3)),
            1..50)) {
            let mut b = BatchBuilder::new();
            for (k, v, ts, hs) in &records {
                let hs: Vec<(&[u8], &[u8])> = hs.iter().map(|(a, b)| (a.as_slice(), b.as_slice())).collect();
                b.push_with_headers(k.as_deref(), v, *ts, &hs);
            }
            let blob = b.finish();
            let back = decode(&blob).unwrap();
            prop_assert_eq!(back.len(), records.len());
            for (got, (k, v, ts, hs)) in back.iter().zip(records.iter()) {
                prop_assert_eq!(got.key.as_deref(), k.as_deref());
                prop_assert_eq!(&got.value[..], &v[..]);
                prop_assert_eq!(got.timestamp_ms, *ts);
                prop_assert_eq!(got.headers.len(), hs.len());
            }
        }
    }
}
