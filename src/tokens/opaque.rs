//! Opaque server-made secrets: refresh tokens and client secrets.
//!
//! A secret is 256 random bits, base64url, behind a short kind prefix so
//! secret scanners can spot a leaked one. Never change a prefix: tokens
//! already handed out carry it. The store only ever sees [`TokenDigest`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    RefreshToken,
    ClientSecret,
    /// Mailed in a verification link.
    VerifyEmail,
    /// Mailed in a password-reset link.
    PasswordReset,
    /// An authorization code (RFC 6749 §4.1.2), single use, 60 s.
    AuthorizationCode,
    /// The value of the `gatehouse_session` cookie.
    BrowserSession,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::RefreshToken => "gatehouse_rt_",
            TokenKind::ClientSecret => "gatehouse_cs_",
            TokenKind::VerifyEmail => "gatehouse_ev_",
            TokenKind::PasswordReset => "gatehouse_pr_",
            TokenKind::AuthorizationCode => "gatehouse_ac_",
            TokenKind::BrowserSession => "gatehouse_bs_",
        }
    }
}

/// A freshly made secret, shown once to its owner.
pub struct OpaqueToken(SecretString);

impl OpaqueToken {
    pub fn generate(kind: TokenKind) -> OpaqueToken {
        let mut bytes = [0u8; 32];
        // The OS random source fails only when there is none at all. Going on
        // would hand out predictable secrets; stopping the process is safer.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            tracing::error!("the operating system's random source failed; stopping");
            crate::telemetry::flush();
            std::process::abort();
        }
        OpaqueToken(SecretString::from(format!(
            "{}{}",
            kind.prefix(),
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(self.0.expose_secret())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for OpaqueToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpaqueToken(..)")
    }
}

/// SHA-256 of a secret: what the store keeps and compares.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(secret: &str) -> TokenDigest {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        TokenDigest(out)
    }

    pub fn from_stored(bytes: &[u8]) -> Option<TokenDigest> {
        <[u8; 32]>::try_from(bytes).ok().map(TokenDigest)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_prefix_and_256_bits() {
        let t = OpaqueToken::generate(TokenKind::RefreshToken);
        let body = t.expose().strip_prefix("gatehouse_rt_").unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_ne!(
            t.expose(),
            OpaqueToken::generate(TokenKind::RefreshToken).expose()
        );
    }

    #[test]
    fn digests_match_only_their_secret() {
        let t = OpaqueToken::generate(TokenKind::ClientSecret);
        assert!(t.digest().matches(&TokenDigest::of(t.expose())));
        assert!(!t.digest().matches(&TokenDigest::of("gatehouse_cs_other")));
        assert_eq!(format!("{:?}", t.digest()), "TokenDigest(..)");
        assert_eq!(format!("{t:?}"), "OpaqueToken(..)");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_digest_is_sha256_and_matches_only_its_own_secret(a in any::<String>(), b in any::<String>()) {
            let da = TokenDigest::of(&a);
            prop_assert!(da.matches(&TokenDigest::of(&a)));
            prop_assert_eq!(da.as_bytes().len(), 32);
            prop_assert_eq!(da.matches(&TokenDigest::of(&b)), a == b);
            let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, a.as_bytes());
            prop_assert_eq!(da.as_bytes(), sha.as_ref());
            prop_assert_eq!(format!("{da:?}"), "TokenDigest(..)");
        }

        #[test]
        fn only_32_stored_bytes_make_a_digest(bytes in prop::collection::vec(any::<u8>(), 0..70)) {
            match TokenDigest::from_stored(&bytes) {
                Some(d) => {
                    prop_assert_eq!(bytes.len(), 32);
                    prop_assert_eq!(d.as_bytes(), &bytes[..]);
                }
                None => prop_assert_ne!(bytes.len(), 32),
            }
        }

        #[test]
        fn made_secrets_carry_their_prefix_and_digest_as_typed(
            kind in prop_oneof![
                Just(TokenKind::RefreshToken),
                Just(TokenKind::ClientSecret),
                Just(TokenKind::VerifyEmail),
                Just(TokenKind::PasswordReset),
            ],
        ) {
            let t = OpaqueToken::generate(kind);
            let body = t.expose().strip_prefix(kind.prefix()).unwrap();
            prop_assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
            prop_assert!(t.digest().matches(&TokenDigest::of(t.expose())));
            prop_assert!(TokenDigest::from_stored(t.digest().as_bytes()).unwrap().matches(&t.digest()));
        }
    }
}
