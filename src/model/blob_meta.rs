//! `/blobstore/<key>`: BlobMeta (SPEC §3.3), where a blob's current version lives and how to
//! check a copy of it.
//!
//! Decoding is lenient about unknown fields (like every payload) and strict about what an agent
//! acts on: the key becomes a local path, `sha256` and `size` are what a download is verified
//! against, and `url` decides which transport fetches it. A node that fails any of these is
//! reported, never half-used.

use serde::{Deserialize, Serialize};

use crate::ident::{self, IdentError};
use crate::model::{self, PayloadError};

/// How a blob is unpacked when an assignment asks for `extract` (SPEC §3.3 `archive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Archive {
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "zip")]
    Zip,
}

impl Archive {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Archive::TarGz => "tar.gz",
            Archive::Zip => "zip",
        }
    }

    /// Parses the SPEC name (`tar.gz`, `zip`).
    pub(crate) fn parse(s: &str) -> Option<Archive> {
        match s {
            "tar.gz" => Some(Archive::TarGz),
            "zip" => Some(Archive::Zip),
            _ => None,
        }
    }

    /// Guesses from a file name: `.tar.gz`/`.tgz` or `.zip`; anything else is not an archive.
    pub(crate) fn guess(file_name: &str) -> Option<Archive> {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Archive::TarGz)
        } else if lower.ends_with(".zip") {
            Some(Archive::Zip)
        } else {
            None
        }
    }
}

/// A blob's current version (SPEC §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    pub schema: u32,
    pub key: String,
    pub version: u64,
    /// 64 lowercase hex digits.
    pub sha256: String,
    pub size: u64,
    /// `file:///abs/path` or `http(s)://…`.
    pub url: String,
    /// Kept as the string written, so `null`, absent and a value all round-trip; checked by
    /// [`BlobMeta::validate`] and read through [`BlobMeta::archive`].
    #[serde(default)]
    pub archive: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobMetaError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("{path}: {source}")]
    Key { path: String, source: IdentError },
    #[error("{path}: the node is named `{name}` but its key is `{key}`")]
    KeyMismatch { path: String, name: String, key: String },
    #[error("{path}: sha256 `{value}` is not 64 lowercase hex digits")]
    Sha256 { path: String, value: String },
    #[error("{path}: url `{value}` is neither file:///absolute/path nor http(s)://host/…")]
    Url { path: String, value: String },
    #[error("{path}: archive `{value}` is not one of tar.gz, zip")]
    Archive { path: String, value: String },
}

impl BlobMeta {
    /// Decodes and validates the payload of `path`. When `path` is `…/blobstore/<name>`, the
    /// key inside must be `<name>`: an agent looking up one key must not get another's blob.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<BlobMeta, BlobMetaError> {
        let meta: BlobMeta = model::decode(path, bytes)?;
        meta.validate(path)?;
        if let Some((parent, name)) = path.rsplit_once('/')
            && parent.ends_with("/blobstore")
            && name != meta.key
        {
            return Err(BlobMetaError::KeyMismatch { path: path.to_owned(), name: name.to_owned(), key: meta.key });
        }
        Ok(meta)
    }

    /// Checks everything an agent acts on; `path` names the source in errors.
    pub fn validate(&self, path: &str) -> Result<(), BlobMetaError> {
        let path = || path.to_owned();
        ident::validate("blob key", &self.key).map_err(|source| BlobMetaError::Key { path: path(), source })?;
        if !is_sha256_hex(&self.sha256) {
            return Err(BlobMetaError::Sha256 { path: path(), value: self.sha256.clone() });
        }
        if !is_supported_url(&self.url) {
            return Err(BlobMetaError::Url { path: path(), value: self.url.clone() });
        }
        if let Some(a) = &self.archive
            && Archive::parse(a).is_none()
        {
            return Err(BlobMetaError::Archive { path: path(), value: a.clone() });
        }
        Ok(())
    }

    /// The archive kind; `None` for a plain file (and for an invalid value, which
    /// [`BlobMeta::validate`] rejects first).
    pub(crate) fn archive(&self) -> Option<Archive> {
        self.archive.as_deref().and_then(Archive::parse)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("BlobMeta always serializes")
    }
}

/// True for exactly 64 lowercase hex digits, the form `gale blob put` writes; uppercase is
/// refused so two spellings of one digest never compare unequal.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `file:///abs/path` (an absolute path with no `..` component: the agent opens it as is) or
/// `http(s)://` with a non-empty host.
pub(crate) fn is_supported_url(url: &str) -> bool {
    if let Some(path) = url.strip_prefix("file://") {
        return path.starts_with('/') && path.len() > 1 && !path.split('/').any(|c| c == "..");
    }
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !rest.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn meta() -> serde_json::Value {
        json!({"schema": 1, "key": "wc-code", "version": 3, "sha256": SHA, "size": 4,
               "url": "file:///srv/blobs/wc-code/3", "archive": "tar.gz"})
    }

    fn decode(v: &serde_json::Value) -> Result<BlobMeta, BlobMetaError> {
        BlobMeta::decode("/gale/blobstore/wc-code", &serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn decodes_the_spec_example_and_round_trips() {
        let m = decode(&meta()).unwrap();
        assert_eq!((m.version, m.size, m.archive()), (3, 4, Some(Archive::TarGz)));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&m.to_json()).unwrap(), meta());
    }

    #[test]
    fn archive_may_be_absent_or_null_and_unknown_fields_are_ignored() {
        let mut v = meta();
        v.as_object_mut().unwrap().remove("archive");
        v["extra"] = json!("from another writer");
        assert_eq!(decode(&v).unwrap().archive(), None);
        v["archive"] = json!(null);
        assert_eq!(decode(&v).unwrap().archive, None);
        v["archive"] = json!("zip");
        assert_eq!(decode(&v).unwrap().archive(), Some(Archive::Zip));
    }

    #[test]
    fn rejects_what_an_agent_cannot_trust() {
        let cases: [(&str, serde_json::Value, &str); 8] = [
            ("key", json!("../x"), "blob key"),
            ("sha256", json!(SHA.to_uppercase()), "sha256"),
            ("sha256", json!(&SHA[1..]), "sha256"),
            ("url", json!("ftp://h/x"), "url"),
            ("url", json!("file://relative/x"), "url"),
            ("url", json!("file:///srv/../etc/passwd"), "url"),
            ("url", json!("http:///nohost"), "url"),
            ("archive", json!("rar"), "archive"),
        ];
        for (field, value, word) in cases {
            let mut v = meta();
            v[field] = value.clone();
            let err = decode(&v).expect_err(&format!("{field}={value}")).to_string();
            assert!(err.contains(word) && err.contains("/gale/blobstore/wc-code"), "{err}");
        }
        let mut v = meta();
        v["schema"] = json!(2);
        assert!(decode(&v).unwrap_err().to_string().contains("unknown schema 2"));
    }

    #[test]
    fn the_key_must_match_the_node_name() {
        let err = BlobMeta::decode("/gale/blobstore/other", &serde_json::to_vec(&meta()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("named `other` but its key is `wc-code`"), "{err}");
    }

    #[test]
    fn urls_and_archive_guesses() {
        for ok in ["file:///a", "http://h:8080/x/1", "https://h/x"] {
            assert!(is_supported_url(ok), "{ok}");
        }
        for bad in ["file:///", "file:/a", "https://", "http://h/a b", "/a"] {
            assert!(!is_supported_url(bad), "{bad}");
        }
        assert_eq!(Archive::guess("code.TAR.GZ"), Some(Archive::TarGz));
        assert_eq!(Archive::guess("code.tgz"), Some(Archive::TarGz));
        assert_eq!(Archive::guess("code.zip"), Some(Archive::Zip));
        assert_eq!(Archive::guess("code.jar"), None);
        assert_eq!(Archive::parse("zip").map(Archive::as_str), Some("zip"));
    }
}
