//! Encoding and checking of one version's data file (see the layout in the module docs above).
//!
//! Decoding is strict: the file must have exactly the length its header announces, so a write
//! torn anywhere (header or payload) is caught by the length check or, failing that, the CRC.
//! Every way a file can be bad is a [`Defect`], which callers log and skip; there is no path
//! from a bad file to "empty map".

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;

use super::stored::{FORMAT_VERSION, OLDEST_FORMAT};

/// The decoded payload: key name → bincode encoding of that key's value.
pub(crate) type Entries = BTreeMap<String, Vec<u8>>;

pub(crate) const MAGIC: &[u8; 8] = b"GALESTAT";
pub(crate) const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Why a version's data file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    #[error("marker without data file (torn write, or removed while reading)")]
    MissingData,
    #[error("zero-length data file")]
    Empty,
    #[error("truncated header ({len} of {HEADER_LEN} bytes)")]
    ShortHeader { len: usize },
    #[error("bad magic (not a gale state file)")]
    BadMagic,
    #[error("unknown format version {0} (this gale reads formats {OLDEST_FORMAT}-{FORMAT_VERSION})")]
    UnknownFormat(u32),
    /// Not a defect of the file: the agent refuses to start on it (`StateError::NewerFormat`)
    /// rather than skip it; only `dump` lists it as one.
    #[error("written by a newer gale (format {0}; this gale reads formats {OLDEST_FORMAT}-{FORMAT_VERSION})")]
    NewerFormat(u32),
    #[error("wrong length: {actual} bytes, header says {expected} (torn write)")]
    WrongLength { actual: u64, expected: u64 },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Undecodable(String),
    #[error("cannot read data file: {0}")]
    Io(String),
}

/// A data file's contents: its format and its map, each value in that format's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub format: u32,
    pub entries: Entries,
}

/// Encodes a whole map (values in the current format) as a data file: header and payload.
pub(crate) fn encode(entries: &Entries) -> Result<Vec<u8>, bincode::Error> {
    let payload = bincode::serialize(entries)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = checksum(FORMAT_VERSION, &out, &payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The CRC32 a data file of `format` carries: over the payload in format 1; from format 2 on
/// over the header's first 20 bytes too (magic, format, length), so that a damaged format
/// field cannot make a file read as another format without the CRC saying so.
pub(crate) fn checksum(format: u32, header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if format >= 2 {
        hasher.update(&header[..HEADER_LEN - 4]);
    }
    hasher.update(payload);
    hasher.finalize()
}

/// Checks and decodes a data file's bytes, of any format from [`OLDEST_FORMAT`] on (the
/// container is the same in all of them; what differs is the encoding of the values).
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, Defect> {
    if bytes.is_empty() {
        return Err(Defect::Empty);
    }
    if bytes.len() < HEADER_LEN {
        return Err(Defect::ShortHeader { len: bytes.len() });
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[0..8] != MAGIC {
        return Err(Defect::BadMagic);
    }
    // The format version is checked before the length: a future format may lay out its header
    // differently, and "unknown format" is the useful thing to report then.
    let format = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if format > FORMAT_VERSION {
        return Err(Defect::NewerFormat(format));
    }
    if format < OLDEST_FORMAT {
        return Err(Defect::UnknownFormat(format));
    }
    let payload_len = u64::from_le_bytes(header[12..20].try_into().unwrap());
    let expected = payload_len.saturating_add(HEADER_LEN as u64);
    let actual = bytes.len() as u64;
    if actual != expected {
        return Err(Defect::WrongLength { actual, expected });
    }
    let stored = u32::from_le_bytes(header[20..24].try_into().unwrap());
    let computed = checksum(format, header, payload);
    if stored != computed {
        return Err(Defect::ChecksumMismatch { stored, computed });
    }
    let entries = bincode::deserialize(payload).map_err(|e| Defect::Undecodable(e.to_string()))?;
    Ok(Decoded { format, entries })
}

/// Reads and checks the data file at `path`. A missing file is a defect, not an I/O error: the
/// caller only asks for files whose marker it saw.
///
/// Only a regular file is read. Opened without `O_NONBLOCK`, a FIFO under a version's name
/// blocked `open`, `read_only` and `dump` forever, and a link to `/dev/zero` read without end.
pub(crate) fn read_version(path: &Path) -> Result<Decoded, Defect> {
    let read = || -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        open_regular(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => decode(&bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Defect::MissingData),
        Err(e) => Err(Defect::Io(e.to_string())),
    }
}

/// The format named in the header of the data file at `path`, if it has our magic; nothing
/// else is read or checked. For finding versions of a newer format, whatever state their
/// payload is in.
pub(crate) fn peek_format(path: &Path) -> Option<u32> {
    let mut header = [0u8; 12];
    open_regular(path).ok()?.read_exact(&mut header).ok()?;
    (&header[0..8] == MAGIC).then(|| u32::from_le_bytes(header[8..12].try_into().unwrap()))
}

fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new().read(true).custom_flags(OFlag::O_NONBLOCK.bits()).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}
