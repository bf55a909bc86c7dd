//! Tokens: server-made opaque secrets with their digests, and JWTs.

pub mod jwt;
mod opaque;

pub use opaque::{OpaqueToken, TokenDigest, TokenKind};
