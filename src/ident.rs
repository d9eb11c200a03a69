//! Identifier rules shared by everything that turns outside input into a path.
//!
//! SPEC §3: supervisor ids, topology ids, blob keys and local names match
//! `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`. Anything else is rejected before it touches a
//! ZooKeeper path or a local file name, so `..`, `/` and empty strings can never escape.

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} `{value}` is longer than 128 characters")]
    TooLong { kind: &'static str, value: String },
    #[error("{kind} `{value}` must start with a letter or digit")]
    BadStart { kind: &'static str, value: String },
    #[error("{kind} `{value}` has `{ch}`: only letters, digits, `.`, `_` and `-` are allowed")]
    BadChar { kind: &'static str, value: String, ch: char },
}

/// Checks `value` against the identifier rule; `kind` names it in the error ("supervisor id").
pub(crate) fn validate(kind: &'static str, value: &str) -> Result<(), IdentError> {
    let mut chars = value.chars();
    let Some(first) = chars.next() else {
        return Err(IdentError::Empty { kind });
    };
    if value.len() > 128 {
        return Err(IdentError::TooLong { kind, value: value.to_owned() });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdentError::BadStart { kind, value: value.to_owned() });
    }
    if let Some(ch) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(IdentError::BadChar { kind, value: value.to_owned(), ch });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet() {
        for ok in ["a", "6f1c-9a2d", "wordcount.v2_x", &"a".repeat(128)] {
            assert_eq!(validate("id", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_what_could_escape_a_path() {
        for bad in ["", ".", "..", "../x", "a/b", "-a", "_a", "a b", "ä", &"a".repeat(129), "a\0"] {
            assert!(validate("id", bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
