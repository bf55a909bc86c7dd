//! An e-mail address, kept as given, compared by its lowercased form.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Email {
    given: String,
    lower: String,
}

impl Email {
    /// Accepts `local@domain` with a dotted domain, no spaces or controls,
    /// at most 254 characters (RFC 5321 §4.5.3.1.3).
    pub fn parse(text: &str) -> Result<Email, &'static str> {
        let text = text.trim();
        if text.is_empty() || text.len() > 254 {
            return Err("must be an e-mail address of at most 254 characters");
        }
        let (local, domain) = text.rsplit_once('@').ok_or("must contain @")?;
        let bad_char = |c: char| c.is_whitespace() || c.is_control();
        if local.is_empty()
            || local.len() > 64
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with(['.', '-'])
            || domain.ends_with(['.', '-'])
            || domain.contains("..")
            || text.chars().any(bad_char)
            || domain
                .chars()
                .any(|c| !(c.is_alphanumeric() || c == '.' || c == '-'))
            || local.contains(['<', '>', '(', ')', '[', ']', '\\', ',', ';', ':', '"'])
        {
            return Err("must be a valid e-mail address");
        }
        Ok(Email {
            given: text.to_owned(),
            lower: normalise(text),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.given
    }

    /// The form used for look-ups and uniqueness.
    pub fn lower(&self) -> &str {
        &self.lower
    }
}

/// The look-up form of a username as typed at login, valid address or not.
pub fn normalise(text: &str) -> String {
    text.trim().to_lowercase()
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Email").field(&self.given).finish()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_keeps_case() {
        let e = Email::parse("Ada.Lovelace+x@Example.org").unwrap();
        assert_eq!(e.as_str(), "Ada.Lovelace+x@Example.org");
        assert_eq!(e.lower(), "ada.lovelace+x@example.org");
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@",
            "a@b",
            "a b@example.org",
            "a@exa mple.org",
            "a@.example.org",
            "a@example..org",
            "a\u{0}@example.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }
}
