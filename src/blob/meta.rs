//! Where a blob's bytes come from. The payload itself (`BlobMeta`, decoding and validation)
//! is `crate::model::blob_meta`, shared with `gale blob put`; this adds what the downloader
//! needs on top: the parsed source of a `url`.

pub(crate) use crate::model::blob_meta::Archive;
pub use crate::model::blob_meta::BlobMeta;

/// Where a blob's content comes from, as parsed from a validated `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    File(std::path::PathBuf),
    Http(reqwest::Url),
}

/// Parses `meta.url`; the error says what is wrong with it.
pub(crate) fn source(meta: &BlobMeta) -> Result<Source, String> {
    if let Some(rest) = meta.url.strip_prefix("file://") {
        // Only `file:///abs`: a host part (`file://host/x`) or a relative path has no meaning
        // on this machine. The path is taken literally (no percent-decoding).
        if !rest.starts_with('/') {
            return Err(format!("`{}`: a file:// url needs an absolute path (file:///…)", meta.url));
        }
        return Ok(Source::File(rest.into()));
    }
    let url = reqwest::Url::parse(&meta.url).map_err(|e| format!("`{}`: {e}", meta.url))?;
    match url.scheme() {
        // The parser already refuses an http(s) url without a host.
        "http" | "https" => Ok(Source::Http(url)),
        other => Err(format!("`{}`: scheme `{other}` is not supported (file, http or https)", meta.url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(url: &str) -> BlobMeta {
        BlobMeta {
            schema: 1,
            key: "k".into(),
            version: 1,
            sha256: "0".repeat(64),
            size: 1,
            url: url.into(),
            archive: None,
        }
    }

    #[test]
    fn urls_become_sources() {
        assert_eq!(source(&meta("file:///srv/b/k/1")), Ok(Source::File("/srv/b/k/1".into())));
        assert!(matches!(source(&meta("https://store:8080/k/1")), Ok(Source::Http(_))));
        for bad in ["file://host/x", "file://rel", "ftp://h/x", "mailto:x@y", "no-scheme"] {
            assert!(source(&meta(bad)).is_err(), "{bad}");
        }
    }
}
