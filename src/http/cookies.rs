//! The cookies of SPEC §11: reading one from a request, and writing
//! `Set-Cookie` with the attributes the settings fix (HttpOnly, SameSite,
//! Secure when the issuer is https, Domain when configured). Five cookies
//! with fixed attributes do not need a cookie crate (poem's pulls in
//! encryption and a date library we would not use).

use poem::Request;

use crate::config::{SameSite, Settings};

/// The browser session of the hosted pages (opaque; server-side state).
pub const SESSION: &str = "gatehouse_session";
/// `/session/*`: the access token, HttpOnly.
pub const ACCESS: &str = "gatehouse_access";
/// `/session/*`: the refresh token, HttpOnly, sent to `/session` only.
pub const REFRESH: &str = "gatehouse_refresh";
/// `/session/*`: the double-submit CSRF value, readable by the app's script.
pub const CSRF: &str = "gatehouse_csrf";

/// `Secure` goes on every cookie when the issuer is https.
pub fn secure(issuer: &str) -> bool {
    issuer.starts_with("https://")
}

/// `scheme://host[:port]` of the issuer: the `Origin` a browser sends for
/// the pages the issuer serves.
pub fn issuer_origin(issuer: &str) -> &str {
    match issuer.find("://") {
        Some(i) => {
            let rest = &issuer[i + 3..];
            &issuer[..i + 3 + rest.find('/').unwrap_or(rest.len())]
        }
        None => issuer,
    }
}

/// The value of cookie `name`, if the request sent exactly one, non-empty.
pub fn read<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    let mut found = None;
    for header in req.headers().get_all("cookie") {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((key, value)) = pair.trim().split_once('=') else {
                continue;
            };
            if key.trim() == name {
                if found.is_some() {
                    // Two cookies of one name (one set for a parent domain,
                    // say): trust neither.
                    return None;
                }
                found = Some(value.trim().trim_matches('"'));
            }
        }
    }
    found.filter(|v| !v.is_empty())
}

/// How one cookie is written.
#[derive(Debug, Clone, Copy)]
pub struct CookieSpec<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub http_only: bool,
    /// `None`: a session cookie, gone when the browser closes.
    pub max_age: Option<i64>,
}

/// `Set-Cookie` for `value`.
pub fn set(settings: &Settings, secure: bool, spec: CookieSpec<'_>, value: &str) -> String {
    let mut out = format!("{}={}; Path={}", spec.name, value, spec.path);
    if let Some(domain) = &settings.cookie_domain {
        out.push_str("; Domain=");
        out.push_str(domain);
    }
    if let Some(age) = spec.max_age {
        out.push_str(&format!("; Max-Age={}", age.max(0)));
    }
    if spec.http_only {
        out.push_str("; HttpOnly");
    }
    if secure {
        out.push_str("; Secure");
    }
    out.push_str(match settings.cookie_samesite {
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
    });
    out
}

/// `Set-Cookie` that removes the cookie.
pub fn clear(settings: &Settings, secure: bool, spec: CookieSpec<'_>) -> String {
    set(
        settings,
        secure,
        CookieSpec {
            max_age: Some(0),
            ..spec
        },
        "",
    )
}

/// The browser-session cookie.
pub const SESSION_COOKIE: CookieSpec<'static> = CookieSpec {
    name: SESSION,
    path: "/",
    http_only: true,
    max_age: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_cookie_and_refuses_doubles() {
        let req = Request::builder()
            .header("cookie", "a=1; gatehouse_session=abc; b=2")
            .finish();
        assert_eq!(read(&req, SESSION), Some("abc"));
        assert_eq!(read(&req, "c"), None);
        let twice = Request::builder()
            .header("cookie", "gatehouse_session=abc")
            .header("cookie", "gatehouse_session=evil")
            .finish();
        assert_eq!(read(&twice, SESSION), None);
    }

    #[test]
    fn the_issuer_origin_drops_the_path() {
        assert_eq!(
            issuer_origin("https://id.example.com/tenant"),
            "https://id.example.com"
        );
        assert_eq!(issuer_origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn writes_the_configured_attributes() {
        let mut settings =
            crate::config::Config::for_tests(std::path::Path::new("/nonexistent"), "sqlite://x.db")
                .settings()
                .unwrap();
        let plain = set(&settings, false, SESSION_COOKIE, "v");
        assert_eq!(plain, "gatehouse_session=v; Path=/; HttpOnly; SameSite=Lax");
        settings.cookie_domain = Some("example.com".into());
        settings.cookie_samesite = SameSite::Strict;
        let strict = set(&settings, true, SESSION_COOKIE, "v");
        assert_eq!(
            strict,
            "gatehouse_session=v; Path=/; Domain=example.com; HttpOnly; Secure; SameSite=Strict"
        );
        assert!(clear(&settings, true, SESSION_COOKIE).contains("Max-Age=0"));
    }
}
