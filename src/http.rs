//! The HTTP surface, described with poem-openapi: the only module that sees
//! requests. Handlers parse, call a flow, and shape the answer.

pub mod discovery;
pub mod oauth2;
pub mod ops;
mod raw_json;

pub use raw_json::RawJson;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTag {
    /// OAuth 2.0 endpoints (RFC 6749, 7009, 7662) and OIDC userinfo.
    OAuth2,
    /// Discovery documents and the key set (RFC 8414, OIDC Discovery, RFC 7517).
    Discovery,
    /// Health and readiness.
    Operations,
}
