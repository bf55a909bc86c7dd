//! Registered redirect URIs (RFC 6749 §3.1.2, RFC 8252, RFC 9700 §4.1) and
//! the one rule that matches a requested URI against them.

use std::fmt;

use url::{Host, Url};

/// A redirect URI a client registered: absolute, no fragment, no userinfo;
/// `https`, `http` on a loopback host only, or a private-use scheme with a
/// dot in it (RFC 8252 §7.1, e.g. `com.example.app:/callback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUri(String);

/// Why a URI cannot be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("must be an absolute URI of at most 2000 characters")]
    NotAbsolute,
    #[error("must not have a fragment (RFC 6749 §3.1.2)")]
    Fragment,
    #[error("must not carry a user name or password")]
    UserInfo,
    #[error("http is allowed for loopback hosts only; use https")]
    PlainHttp,
    #[error("a custom scheme must be a reverse domain name such as com.example.app (RFC 8252 §7.1)")]
    Scheme,
}

impl RedirectUri {
    pub fn parse(text: &str) -> Result<RedirectUri, RedirectUriError> {
        if text.len() > 2000 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RedirectUriError::NotAbsolute);
        }
        let url = Url::parse(text).map_err(|_| RedirectUriError::NotAbsolute)?;
        if url.fragment().is_some() || text.contains('#') {
            return Err(RedirectUriError::Fragment);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RedirectUriError::UserInfo);
        }
        match url.scheme() {
            "https" if url.host().is_some() => {}
            "http" if is_loopback(&url) || url.host_str() == Some("localhost") => {}
            "http" => return Err(RedirectUriError::PlainHttp),
            "https" => return Err(RedirectUriError::NotAbsolute),
            scheme if scheme.contains('.') => {}
            _ => return Err(RedirectUriError::Scheme),
        }
        Ok(RedirectUri(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `requested` names this URI: the very same string, except that
    /// the port of an http loopback IP literal may differ (RFC 8252 §7.3).
    /// No normalisation, no prefix or case folding (RFC 9700 §4.1.3).
    pub fn matches(&self, requested: &str) -> bool {
        if self.0 == requested {
            return true;
        }
        let (Ok(registered), Ok(asked)) = (Url::parse(&self.0), Url::parse(requested)) else {
            return false;
        };
        if registered.scheme() != "http" || !is_loopback(&registered) {
            return false;
        }
        // Compare everything but the port, on the strings as given.
        without_port(&self.0, &registered) == without_port(requested, &asked)
            && asked.scheme() == "http"
            && is_loopback(&asked)
    }

    /// The origin (`scheme://host[:port]`), or for a private-use scheme
    /// `scheme:`: what a page's `form-action` must allow to send the browser there.
    pub fn origin(text: &str) -> Option<String> {
        let url = Url::parse(text).ok()?;
        match url.scheme() {
            "http" | "https" => Some(url.origin().ascii_serialization()),
            scheme => Some(format!("{scheme}:")),
        }
    }
}

/// An IP-literal loopback host (`127.0.0.1`, `[::1]`); `localhost` is not one
/// for the port exception (RFC 8252 §8.3).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// The URI text with its `:port` removed, when it had one.
fn without_port(text: &str, url: &Url) -> Option<String> {
    let host = match url.host()? {
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
        Host::Domain(d) => d.to_owned(),
    };
    let prefix = format!("http://{host}");
    let rest = text.strip_prefix(&prefix)?;
    let rest = match rest.strip_prefix(':') {
        Some(after) => after.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    Some(format!("{prefix}{rest}"))
}

impl fmt::Display for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_https_loopback_http_and_private_schemes_only() {
        for ok in [
            "https://app.example/callback",
            "https://app.example/cb?tenant=1",
            "http://127.0.0.1/cb",
            "http://[::1]:8000/cb",
            "http://localhost:3000/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(RedirectUri::parse(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("/relative", RedirectUriError::NotAbsolute),
            ("https://app.example/cb#x", RedirectUriError::Fragment),
            ("https://user:pw@app.example/cb", RedirectUriError::UserInfo),
            ("http://app.example/cb", RedirectUriError::PlainHttp),
            ("javascript:alert(1)", RedirectUriError::Scheme),
            ("data:text/html,x", RedirectUriError::Scheme),
            ("https://app.example/c b", RedirectUriError::NotAbsolute),
        ] {
            assert_eq!(RedirectUri::parse(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn matches_exactly_except_a_loopback_port() {
        let web = RedirectUri::parse("https://app.example/callback").unwrap();
        assert!(web.matches("https://app.example/callback"));
        for trick in [
            "https://app.example/callback/",
            "https://app.example/callback/../x",
            "https://app.example/callbackx",
            "https://app.example/callback?x=1",
            "https://APP.example/callback",
            "https://app.example/Callback",
            "https://app.example:443/callback",
            "https://app.example.evil/callback",
            "https://app.example/callback#x",
            "http://app.example/callback",
        ] {
            assert!(!web.matches(trick), "{trick}");
        }
        let native = RedirectUri::parse("http://127.0.0.1/cb").unwrap();
        assert!(native.matches("http://127.0.0.1:51004/cb"));
        assert!(!native.matches("http://127.0.0.1:51004/cb2"));
        assert!(!native.matches("http://localhost:51004/cb"));
        assert!(!native.matches("http://127.0.0.2:51004/cb"));
        let v6 = RedirectUri::parse("http://[::1]:1/cb").unwrap();
        assert!(v6.matches("http://[::1]:2/cb"));
        let local = RedirectUri::parse("http://localhost:3000/cb").unwrap();
        assert!(!local.matches("http://localhost:3001/cb"));
    }

    #[test]
    fn origins_for_form_action() {
        assert_eq!(
            RedirectUri::origin("https://app.example:8443/cb?x").as_deref(),
            Some("https://app.example:8443")
        );
        assert_eq!(
            RedirectUri::origin("com.example.app:/cb").as_deref(),
            Some("com.example.app:")
        );
    }
}
