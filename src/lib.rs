//! gatehouse: an OAuth 2.0 / OpenID Connect identity provider in one binary.
//!
//! - [`config`]: every setting, as `serve` flags and `GATEHOUSE_*` variables.
//! - [`cli`]: `serve`, `migrate`, `clients`, `users`, `keys`, `openapi`.
//! - [`app`]: the HTTP application, its middleware and its lifetime.
//! - [`http`]: the API surface (poem-openapi), the only module that sees requests.
//! - [`oauth`]: the grant flows, revocation, introspection and userinfo.
//! - [`domain`]: value types that validate on construction.
//! - [`store`]: persistence on SQLite or PostgreSQL.
//! - [`tokens`]: opaque tokens and their digests, JWT signing and checking.
//! - [`keys`]: signing keys, their files, the JWKS and rotation.
//! - [`password`]: argon2id hashing off the async workers.
//! - [`error`]: the one error type and its two wire shapes.

pub mod accounts;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod oauth;
pub mod password;
pub mod store;
pub mod telemetry;
pub mod tokens;

/// Seconds since the Unix epoch; read once per request at the edge.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC text for Unix seconds, e.g. `2026-11-25T13:04:21Z`.
pub fn rfc3339(secs: i64) -> String {
    // Civil-from-days, after Howard Hinnant's public-domain algorithm.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_611_861), "2026-11-25T13:04:21Z");
    }
}
