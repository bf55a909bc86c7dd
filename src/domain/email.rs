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
        // What the mail sender will accept, so every account can be mailed.
        if text.parse::<lettre::Address>().is_err() {
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
            "a@b@example.org",
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

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Mostly address-shaped text, with any Unicode sprinkled in.
    fn address_like() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9._%+'-]{1,20}@[A-Za-z0-9-]{1,12}(\\.[A-Za-z]{2,6}){1,3}",
            "\\PC{1,12}@\\PC{1,12}\\.\\PC{1,6}",
            "[ \\t]{0,2}[a-zA-Z\\x{C0}-\\x{24F}\\x{130}\\x{391}-\\x{3C9}]{1,10}@[a-zA-Z\\x{C0}-\\x{24F}\\x{130}]{1,10}\\.[a-zA-Z]{2,4}[ \\t]{0,2}",
            "\\PC{0,300}",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepted_addresses_are_consistent(text in address_like()) {
            if let Ok(email) = Email::parse(&text) {
                prop_assert_eq!(email.as_str(), text.trim());
                prop_assert!(email.as_str().len() <= 254);
                prop_assert!(!email.as_str().chars().any(|c| c.is_whitespace() || c.is_control()));
                // The look-up form is what a login with the same text looks up.
                let looked_up = normalise(&text);
                prop_assert_eq!(email.lower(), looked_up.as_str());
                prop_assert_eq!(email.to_string(), email.as_str());
                // Parsing the stored form again gives the same address.
                let again = Email::parse(email.as_str()).unwrap();
                prop_assert_eq!(&again, &email);
            }
        }

        #[test]
        fn the_lowercase_form_is_idempotent(text in address_like()) {
            let once = normalise(&text);
            prop_assert_eq!(normalise(&once), once.clone());
            if let Ok(email) = Email::parse(&text) {
                prop_assert_eq!(normalise(email.lower()), email.lower());
                // ASCII addresses differing only in case share one look-up
                // form (Unicode case mapping is not a bijection: ß ↔ SS).
                if let Ok(upper) = Email::parse(&text.to_ascii_uppercase()) {
                    prop_assert_eq!(normalise(upper.lower()), normalise(email.lower()));
                }
            }
        }
    }
}
