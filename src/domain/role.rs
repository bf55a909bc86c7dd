//! A role name, as it appears in the `roles` claim.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    /// 1–64 characters of `a-z 0-9 _ - : .`.
    pub fn parse(text: &str) -> Result<Role, &'static str> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-:.".contains(c));
        if ok {
            Ok(Role(text.to_owned()))
        } else {
            Err("a role is 1 to 64 characters of a-z, 0-9, _ - : .")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_names_only() {
        assert!(Role::parse("admin").is_ok());
        assert!(Role::parse("billing:read").is_ok());
        for bad in ["", "Admin", "a b", "x\u{0}"] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn allowed(text: &str) -> bool {
        (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-:.".contains(&b))
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_documented_alphabet(
            text in prop_oneof!["[a-z0-9_:.-]{0,70}", "[ -~]{0,16}", "\\PC{0,16}", any::<String>()],
        ) {
            match Role::parse(&text) {
                Ok(role) => {
                    prop_assert!(allowed(&text), "{:?} accepted", text);
                    prop_assert_eq!(role.as_str(), text.as_str());
                    prop_assert_eq!(role.to_string(), text.clone());
                    prop_assert_eq!(Role::parse(role.as_str()), Ok(role));
                }
                Err(_) => prop_assert!(!allowed(&text), "{:?} refused", text),
            }
        }
    }
}
