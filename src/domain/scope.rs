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

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// One RFC 6749 §3.3 scope-token.
    fn token() -> impl Strategy<Value = String> {
        "[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,16}"
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_what_it_accepts_prints_back(text in "\\PC{0,64}|[ -~]{0,64}") {
            if let Ok(scope) = Scope::parse(&text) {
                let printed = scope.to_string();
                prop_assert_eq!(Scope::parse(&printed), Ok(scope.clone()));
                prop_assert!(!printed.starts_with(' ') && !printed.ends_with(' ') && !printed.contains("  "));
            }
        }

        #[test]
        fn any_list_of_tokens_round_trips_sorted_and_deduplicated(
            tokens in prop::collection::vec(token(), 0..12),
            gaps in prop::collection::vec(1usize..4, 12),
        ) {
            let mut text = String::new();
            for (i, t) in tokens.iter().enumerate() {
                text.push_str(&" ".repeat(gaps[i]));
                text.push_str(t);
            }
            let scope = Scope::parse(&text).unwrap();
            let mut want: Vec<&str> = tokens.iter().map(String::as_str).collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(scope.to_string(), want.join(" "));
            prop_assert_eq!(scope.iter().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(scope.is_empty(), want.is_empty());
            for t in &tokens {
                prop_assert!(scope.contains(t));
            }
            prop_assert_eq!(Scope::parse(&scope.to_string()).unwrap(), scope.clone());
            prop_assert_eq!(Scope::from_tokens(want.iter().copied()), scope);
        }

        #[test]
        fn a_character_outside_rfc_6749_is_refused(
            before in token(),
            bad in any::<char>().prop_filter("not a scope char or space", |c| *c != ' ' && !is_scope_char(*c)),
            after in token(),
        ) {
            let text = format!("{before}{bad}{after}");
            prop_assert!(Scope::parse(&text).is_err(), "{:?}", text);
        }

        #[test]
        fn a_narrowed_scope_is_a_subset_and_the_union_holds_both(
            a in prop::collection::vec(token(), 0..8),
            b in prop::collection::vec(token(), 0..8),
        ) {
            let sa = Scope::from_tokens(a.iter().map(String::as_str));
            let sb = Scope::from_tokens(b.iter().map(String::as_str));
            let both = sa.union(&sb);
            prop_assert!(sa.is_subset(&both) && sb.is_subset(&both));
            prop_assert!(Scope::default().is_subset(&sa));
        }
    }
}
