//! A set of scope tokens (RFC 6749 §3.3).

use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope(BTreeSet<String>);

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

impl Scope {
    /// Parses a space-delimited list; empty text is the empty scope.
    pub fn parse(text: &str) -> Result<Scope, &'static str> {
        if text.len() > 2048 {
            return Err("scope is too long");
        }
        let mut set = BTreeSet::new();
        for token in text.split(' ').filter(|t| !t.is_empty()) {
            if !token.chars().all(is_scope_char) {
                return Err("scope holds a character RFC 6749 §3.3 does not allow");
            }
            set.insert(token.to_owned());
        }
        Ok(Scope(set))
    }

    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Scope {
        Scope(tokens.into_iter().map(str::to_owned).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, token: &str) -> bool {
        self.0.contains(token)
    }

    pub fn is_subset(&self, other: &Scope) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn union(&self, other: &Scope) -> Scope {
        Scope(self.0.union(&other.0).cloned().collect())
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(token)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_in_order_without_duplicates() {
        let s = Scope::parse("profile openid  email openid").unwrap();
        assert_eq!(s.to_string(), "email openid profile");
    }

    #[test]
    fn narrowing_is_a_subset() {
        let wide = Scope::parse("a b c").unwrap();
        assert!(Scope::parse("a c").unwrap().is_subset(&wide));
        assert!(!Scope::parse("a d").unwrap().is_subset(&wide));
    }

    #[test]
    fn refuses_characters_outside_rfc_6749() {
        for bad in ["a\"b", "a\\b", "é", "a\tb", "\u{0}"] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }
}
