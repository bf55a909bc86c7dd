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
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::RefreshToken => "ghr_",
            TokenKind::ClientSecret => "ghs_",
            TokenKind::VerifyEmail => "ghv_",
            TokenKind::PasswordReset => "ghp_",
        }
    }
}

/// A freshly made secret, shown once to its owner.
pub struct OpaqueToken(SecretString);

impl OpaqueToken {
    pub fn generate(kind: TokenKind) -> OpaqueToken {
        let mut bytes = [0u8; 32];
        // SystemRandom only fails when the OS has no entropy source at all.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            tracing::error!("the operating system's random source failed");
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
#[derive(Clone, PartialEq, Eq)]
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
        let body = t.expose().strip_prefix("ghr_").unwrap();
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
        assert!(!t.digest().matches(&TokenDigest::of("ghs_other")));
        assert_eq!(format!("{:?}", t.digest()), "TokenDigest(..)");
        assert_eq!(format!("{t:?}"), "OpaqueToken(..)");
    }
}
