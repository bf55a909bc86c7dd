//! One RSA key: generated and parsed with aws-lc-rs, held parsed for signing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;

/// The public half as published in the JWKS (RFC 7517 §4, RFC 7518 §6.3.1).
#[derive(Debug, Clone, Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// A parsed RSA private key, ready to sign; parsing happens once, at load.
pub struct SigningKey {
    pub kid: String,
    pair: KeyPair,
    pub jwk: Jwk,
    pub decoding: jsonwebtoken::DecodingKey,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot write a key to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl SigningKey {
    /// A new RSA-2048 key and its PKCS#8 DER encoding.
    pub fn generate() -> anyhow::Result<(SigningKey, Vec<u8>)> {
        let pair =
            KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        let der = pair
            .as_der()
            .map_err(|_| anyhow::anyhow!("PKCS#8 encoding failed"))?
            .as_ref()
            .to_vec();
        Ok((SigningKey::from_pair(pair)?, der))
    }

    pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<SigningKey> {
        let pair = KeyPair::from_pkcs8(der).map_err(|e| anyhow::anyhow!("not an RSA key: {e}"))?;
        SigningKey::from_pair(pair)
    }

    fn from_pair(pair: KeyPair) -> anyhow::Result<SigningKey> {
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let kid = thumbprint(&n, &e);
        let decoding =
            jsonwebtoken::DecodingKey::from_rsa_components(&n, &e).context("public key components")?;
        Ok(SigningKey {
            jwk: Jwk {
                kty: "RSA",
                use_: "sig",
                alg: "RS256",
                kid: kid.clone(),
                n,
                e,
            },
            kid,
            pair,
            decoding,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`).
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
        Ok(signature)
    }
}

/// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn pem_encode(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

fn pem_decode(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN PRIVATE KEY-----")?;
    let rest = &text[start + "-----BEGIN PRIVATE KEY-----".len()..];
    let end = rest.find("-----END PRIVATE KEY-----")?;
    let body: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(body).ok()
}

/// Writes `<dir>/<kid>.pem` with mode 0600, creating the directory if needed.
pub fn write_key_file(dir: &Path, kid: &str, der: &[u8]) -> Result<PathBuf, KeyFileError> {
    let path = dir.join(format!("{kid}.pem"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path)?;
        file.write_all(pem_encode(der).as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| KeyFileError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Every key in the directory that parses; a missing directory holds none.
pub fn read_key_dir(dir: &Path) -> anyhow::Result<Vec<SigningKey>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KeyFileError::Read {
                path: dir.to_owned(),
                source,
            }
            .into());
        }
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        match read_key_file(&path) {
            Ok(key) => keys.push(key),
            Err(e) => tracing::warn!(path = %path.display(), "skipping unreadable key file: {e:#}"),
        }
    }
    Ok(keys)
}

pub fn read_key_file(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let der = pem_decode(&text).context("no PKCS#8 PRIVATE KEY block")?;
    SigningKey::from_pkcs8(&der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_kid() {
        let (key, der) = SigningKey::generate().unwrap();
        let pem = pem_encode(&der);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = SigningKey::from_pkcs8(&pem_decode(&pem).unwrap()).unwrap();
        assert_eq!(key.kid, again.kid);
        assert_eq!(key.jwk.e, "AQAB");
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(n, "AQAB"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn signatures_verify_with_the_published_numbers() {
        let (key, _) = SigningKey::generate().unwrap();
        let sig = key.sign(b"payload").unwrap();
        let sig = URL_SAFE_NO_PAD.encode(sig);
        assert!(
            jsonwebtoken::crypto::verify(&sig, b"payload", &key.decoding, jsonwebtoken::Algorithm::RS256)
                .unwrap()
        );
    }
}
