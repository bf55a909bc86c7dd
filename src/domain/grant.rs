//! The grant types gatehouse knows (RFC 6749 §4).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantType {
    /// RFC 6749 §4.3; kept for first-party apps only (RFC 9700 §2.4).
    Password,
    /// RFC 6749 §6.
    RefreshToken,
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 6749 §4.1, with PKCE (RFC 7636): browser sign-in (SPEC §11).
    AuthorizationCode,
}

impl GrantType {
    pub const ALL: [GrantType; 4] = [
        GrantType::Password,
        GrantType::RefreshToken,
        GrantType::ClientCredentials,
        GrantType::AuthorizationCode,
    ];

    pub fn parse(text: &str) -> Option<GrantType> {
        GrantType::ALL.into_iter().find(|g| g.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Password => "password",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::AuthorizationCode => "authorization_code",
        }
    }

    /// Grants through which a client acts for a user.
    pub fn acts_for_users(self) -> bool {
        matches!(
            self,
            GrantType::Password | GrantType::RefreshToken | GrantType::AuthorizationCode
        )
    }
}

impl fmt::Display for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_grant() {
        for g in GrantType::ALL {
            assert_eq!(GrantType::parse(g.as_str()), Some(g));
        }
        assert_eq!(GrantType::parse("implicit"), None);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parse_knows_exactly_the_three_names(
            text in prop_oneof![
                Just("password".to_owned()),
                Just("refresh_token".to_owned()),
                Just("client_credentials".to_owned()),
                Just("Password".to_owned()),
                Just("password ".to_owned()),
                Just("authorization_code".to_owned()),
                "[a-z_]{0,20}",
                any::<String>(),
            ],
        ) {
            match GrantType::parse(&text) {
                Some(g) => {
                    prop_assert_eq!(g.as_str(), text.as_str());
                    prop_assert_eq!(g.to_string(), text.clone());
                    prop_assert_eq!(g.acts_for_users(), g != GrantType::ClientCredentials);
                }
                None => prop_assert!(GrantType::ALL.iter().all(|g| g.as_str() != text)),
            }
        }
    }
}
