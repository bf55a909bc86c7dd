//! Response headers every answer carries: security headers, a CSP on HTML,
//! HSTS when the issuer is https, and CORS for the configured origins only.

use poem::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, CACHE_CONTROL, CONTENT_SECURITY_POLICY, ORIGIN, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, VARY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use poem::http::{HeaderMap, HeaderValue, Method, StatusCode};
use poem::{Request, Response};

use crate::error::Problem;

/// The policy, resolved once from the settings.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    /// Origins allowed by CORS (`GATEHOUSE_CORS_ORIGINS`), exact matches.
    pub cors_origins: Vec<String>,
    /// Send HSTS: the issuer is https.
    pub hsts: bool,
    /// How long one request may take, body upload included, before a 503.
    pub request_timeout: std::time::Duration,
}

/// Swagger UI runs inline script and style; that is allowed on `/docs` only.
const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";
/// Everything else: nothing may load, nothing may frame us.
const STRICT_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'";
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, X-CSRF-Token, X-Request-Id";
const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

impl HeaderPolicy {
    fn allowed_origin<'r>(&self, req_headers: &'r HeaderMap) -> Option<&'r str> {
        let origin = req_headers.get(ORIGIN)?.to_str().ok()?;
        self.cors_origins.iter().any(|o| o == origin).then_some(origin)
    }

    /// Answers a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
    pub fn preflight(&self, req: &Request) -> Option<Response> {
        if req.method() != Method::OPTIONS || !req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let Some(origin) = self.allowed_origin(req.headers()) else {
            return Some(
                Problem::new(
                    StatusCode::FORBIDDEN,
                    "cors_origin_not_allowed",
                    "This origin is not allowed",
                )
                .into_response(),
            );
        };
        Some(
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("Access-Control-Allow-Origin", origin)
                .header("Access-Control-Allow-Credentials", "true")
                .header("Access-Control-Allow-Methods", ALLOWED_METHODS)
                .header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
                .header("Access-Control-Max-Age", "600")
                .header("Vary", "Origin")
                .finish(),
        )
    }

    /// Adds the security headers and, for an allowed `Origin`, CORS headers
    /// naming that origin (never `*`, since credentials are allowed).
    pub fn apply(&self, path: &str, origin: Option<&HeaderValue>, resp: &mut Response) {
        let cors_origin = origin
            .filter(|o| {
                o.to_str()
                    .is_ok_and(|o| self.cors_origins.iter().any(|allowed| allowed == o))
            })
            .cloned();
        let headers = resp.headers_mut();
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        if !headers.contains_key(CONTENT_SECURITY_POLICY) {
            let csp = if path == "/docs" || path.starts_with("/docs/") {
                DOCS_CSP
            } else {
                STRICT_CSP
            };
            headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
        }
        // Profiles, users and shown-once client secrets are never cached.
        if (path.starts_with("/accounts") || path.starts_with("/admin"))
            && !headers.contains_key(CACHE_CONTROL)
        {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if self.hsts {
            headers.insert(
                STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            );
        }
        if let Some(origin) = cors_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            headers.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("X-Request-Id, Retry-After"),
            );
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}
