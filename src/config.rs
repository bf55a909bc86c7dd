//! Configuration: every setting is a `GATEHOUSE_*` variable and a command-line flag.
//!
//! Values are taken as text by clap and checked afterwards in [`Config::settings`],
//! so a bad value is reported with the name of its variable (clap's own messages
//! name only the flag).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use secrecy::SecretString;

/// The raw settings as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "GATEHOUSE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: String,
    /// `iss` claim and base of discovery URLs [default: http://<listen>].
    #[arg(long, env = "GATEHOUSE_ISSUER", global = true)]
    pub issuer: Option<String>,
    /// Base of links put in e-mails [default: the issuer].
    #[arg(long, env = "GATEHOUSE_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Database: `sqlite://FILE` or `postgres://…`.
    #[arg(
        long,
        env = "GATEHOUSE_DATABASE_URL",
        default_value = "sqlite://gatehouse.db",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Directory of the signing keys (PKCS#8 PEM, mode 0600).
    #[arg(long, env = "GATEHOUSE_KEYS_DIR", default_value = "keys", global = true)]
    pub keys_dir: PathBuf,
    /// SMTP server, e.g. `smtp://127.0.0.1:2525`; unset = write mail to the outbox.
    #[arg(long, env = "GATEHOUSE_SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Directory of `.eml` files when no SMTP server is set.
    #[arg(
        long,
        env = "GATEHOUSE_MAIL_OUTBOX",
        default_value = "mail-outbox",
        global = true
    )]
    pub mail_outbox: PathBuf,
    /// From header of outgoing mail.
    #[arg(
        long,
        env = "GATEHOUSE_MAIL_FROM",
        default_value = "gatehouse <no-reply@localhost>",
        global = true
    )]
    pub mail_from: String,
    /// Access token lifetime in seconds.
    #[arg(
        long,
        env = "GATEHOUSE_ACCESS_TOKEN_TTL",
        default_value = "900",
        global = true
    )]
    pub access_token_ttl: String,
    /// Refresh token idle lifetime in seconds.
    #[arg(
        long,
        env = "GATEHOUSE_REFRESH_TOKEN_TTL",
        default_value = "2592000",
        global = true
    )]
    pub refresh_token_ttl: String,
    /// Absolute lifetime of one login's refresh chain in seconds.
    #[arg(
        long,
        env = "GATEHOUSE_SESSION_MAX_AGE",
        default_value = "7776000",
        global = true
    )]
    pub session_max_age: String,
    /// Refuse the password grant until the e-mail address is verified.
    #[arg(
        long,
        env = "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
        default_value = "true",
        global = true
    )]
    pub require_verified_email: String,
    /// Comma-separated origins allowed by CORS.
    #[arg(long, env = "GATEHOUSE_CORS_ORIGINS", default_value = "", global = true)]
    pub cors_origins: String,
    /// Comma-separated CIDRs whose `X-Forwarded-For` is believed.
    #[arg(long, env = "GATEHOUSE_TRUSTED_PROXIES", default_value = "", global = true)]
    pub trusted_proxies: String,
    /// Log format: `pretty` or `json`.
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: String,
    /// `aud` of access tokens, comma-separated for several [default: the issuer].
    #[arg(long, env = "GATEHOUSE_AUDIENCE", global = true)]
    pub audience: Option<String>,
    /// Minimum password length.
    #[arg(
        long,
        env = "GATEHOUSE_PASSWORD_MIN_LENGTH",
        default_value = "8",
        global = true
    )]
    pub password_min_length: String,
    /// Per-IP request budget per minute on the token and account endpoints.
    #[arg(
        long,
        env = "GATEHOUSE_RATE_LIMIT_PER_MINUTE",
        default_value = "60",
        global = true
    )]
    pub rate_limit_per_minute: String,
    /// Failed logins of one account before back-off starts.
    #[arg(
        long,
        env = "GATEHOUSE_LOGIN_BACKOFF_AFTER",
        default_value = "5",
        global = true
    )]
    pub login_backoff_after: String,
    /// `Domain` of the session cookies [default: host-only].
    #[arg(long, env = "GATEHOUSE_COOKIE_DOMAIN", global = true)]
    pub cookie_domain: Option<String>,
    /// `SameSite` of the session cookies: `lax` or `strict`.
    #[arg(long, env = "GATEHOUSE_COOKIE_SAMESITE", default_value = "lax", global = true)]
    pub cookie_samesite: String,
    /// `max-age` of the JWKS in seconds; a rotated key signs only after this delay.
    #[arg(long, env = "GATEHOUSE_JWKS_MAX_AGE", default_value = "300", global = true)]
    pub jwks_max_age: String,
    /// Seconds a request may take, body upload included, before a 503.
    #[arg(long, env = "GATEHOUSE_REQUEST_TIMEOUT", default_value = "30", global = true)]
    pub request_timeout: String,
}

/// A configuration value that cannot be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn bad(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

/// A CIDR block, e.g. `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr {
            network: addr,
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Checked settings, the form the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Without a trailing slash.
    pub issuer: Option<String>,
    pub public_url: Option<String>,
    pub database_url: String,
    pub keys_dir: PathBuf,
    pub smtp_url: Option<SecretString>,
    pub mail_outbox: PathBuf,
    pub mail_from: String,
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
    pub session_max_age: i64,
    pub require_verified_email: bool,
    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub log_format: LogFormat,
    pub audience: Option<Vec<String>>,
    pub password_min_length: usize,
    pub rate_limit_per_minute: u32,
    pub login_backoff_after: u32,
    pub cookie_domain: Option<String>,
    pub cookie_samesite: SameSite,
    pub jwks_max_age: i64,
    pub request_timeout: i64,
}

fn seconds(variable: &'static str, value: &str) -> Result<i64, ConfigError> {
    match value.trim().parse::<i64>() {
        Ok(n) if n > 0 && n <= 10 * 365 * 24 * 3600 => Ok(n),
        _ => Err(bad(
            variable,
            format!("expected a positive number of seconds, got {value:?}"),
        )),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    variable: &'static str,
    value: &str,
) -> Result<T, ConfigError> {
    match value.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(bad(
            variable,
            format!("expected a positive whole number, got {value:?}"),
        )),
    }
}

fn url_base(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim().trim_end_matches('/');
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !value.contains(['?', '#', ' ']) => Ok(value.to_owned()),
        _ => Err(bad(
            variable,
            format!("expected an http:// or https:// URL without query or fragment, got {value:?}"),
        )),
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl Config {
    /// Checks every value; the first bad one is returned, naming its variable.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let listen = self.listen.trim().parse::<SocketAddr>().map_err(|_| {
            bad(
                "GATEHOUSE_LISTEN",
                format!(
                    "expected an address such as 127.0.0.1:8080, got {:?}",
                    self.listen
                ),
            )
        })?;
        let issuer = self
            .issuer
            .as_deref()
            .map(|v| url_base("GATEHOUSE_ISSUER", v))
            .transpose()?;
        let public_url = self
            .public_url
            .as_deref()
            .map(|v| url_base("GATEHOUSE_PUBLIC_URL", v))
            .transpose()?;
        let database_url = self.database_url.trim().to_owned();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(bad(
                "GATEHOUSE_DATABASE_URL",
                "expected sqlite://FILE or postgres://…",
            ));
        }
        let smtp_url = match self.smtp_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if url.starts_with("smtp://") || url.starts_with("smtps://") => {
                Some(SecretString::from(url.to_owned()))
            }
            Some(_) => {
                return Err(bad("GATEHOUSE_SMTP_URL", "expected smtp://… or smtps://…"));
            }
        };
        if self.mail_from.trim().parse::<lettre::message::Mailbox>().is_err() {
            return Err(bad(
                "GATEHOUSE_MAIL_FROM",
                format!(
                    "expected a mailbox such as `gatehouse <no-reply@example.com>`, got {:?}",
                    self.mail_from
                ),
            ));
        }
        let require_verified_email = match self.require_verified_email.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(bad(
                    "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
                    format!("expected true or false, got {other:?}"),
                ));
            }
        };
        let cors_origins = list(&self.cors_origins)
            .map(|origin| {
                if origin == "*" {
                    return Err(bad(
                        "GATEHOUSE_CORS_ORIGINS",
                        "`*` is not allowed; list the origins",
                    ));
                }
                url_base("GATEHOUSE_CORS_ORIGINS", origin)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = list(&self.trusted_proxies)
            .map(|cidr| {
                Cidr::parse(cidr).ok_or_else(|| {
                    bad(
                        "GATEHOUSE_TRUSTED_PROXIES",
                        format!("expected CIDRs such as 10.0.0.0/8, got {cidr:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let log_format = match self.log_format.trim() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "GATEHOUSE_LOG_FORMAT",
                    format!("expected pretty or json, got {other:?}"),
                ));
            }
        };
        let audience = match self.audience.as_deref() {
            None => None,
            Some(value) => {
                let items: Vec<String> = list(value).map(str::to_owned).collect();
                if items.is_empty() {
                    return Err(bad("GATEHOUSE_AUDIENCE", "expected at least one audience"));
                }
                Some(items)
            }
        };
        let password_min_length: usize =
            positive("GATEHOUSE_PASSWORD_MIN_LENGTH", &self.password_min_length)?;
        if !(8..=128).contains(&password_min_length) {
            return Err(bad(
                "GATEHOUSE_PASSWORD_MIN_LENGTH",
                format!("expected 8 to 128, got {password_min_length}"),
            ));
        }
        let cookie_samesite = match self.cookie_samesite.trim() {
            "lax" => SameSite::Lax,
            "strict" => SameSite::Strict,
            other => {
                return Err(bad(
                    "GATEHOUSE_COOKIE_SAMESITE",
                    format!("expected lax or strict, got {other:?}"),
                ));
            }
        };
        Ok(Settings {
            listen,
            issuer,
            public_url,
            database_url,
            keys_dir: self.keys_dir.clone(),
            smtp_url,
            mail_outbox: self.mail_outbox.clone(),
            mail_from: self.mail_from.clone(),
            access_token_ttl: seconds("GATEHOUSE_ACCESS_TOKEN_TTL", &self.access_token_ttl)?,
            refresh_token_ttl: seconds("GATEHOUSE_REFRESH_TOKEN_TTL", &self.refresh_token_ttl)?,
            session_max_age: seconds("GATEHOUSE_SESSION_MAX_AGE", &self.session_max_age)?,
            require_verified_email,
            cors_origins,
            trusted_proxies,
            log_format,
            audience,
            password_min_length,
            rate_limit_per_minute: positive("GATEHOUSE_RATE_LIMIT_PER_MINUTE", &self.rate_limit_per_minute)?,
            login_backoff_after: positive("GATEHOUSE_LOGIN_BACKOFF_AFTER", &self.login_backoff_after)?,
            cookie_domain: self.cookie_domain.clone().filter(|d| !d.trim().is_empty()),
            cookie_samesite,
            jwks_max_age: seconds("GATEHOUSE_JWKS_MAX_AGE", &self.jwks_max_age)?,
            request_timeout: seconds("GATEHOUSE_REQUEST_TIMEOUT", &self.request_timeout)?,
        })
    }

    /// Defaults for tests: everything under `dir`, an ephemeral port.
    pub fn for_tests(dir: &std::path::Path, database_url: &str) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            issuer: None,
            public_url: None,
            database_url: database_url.into(),
            keys_dir: dir.join("keys"),
            smtp_url: None,
            mail_outbox: dir.join("mail-outbox"),
            mail_from: "gatehouse <no-reply@localhost>".into(),
            access_token_ttl: "900".into(),
            refresh_token_ttl: "2592000".into(),
            session_max_age: "7776000".into(),
            require_verified_email: "true".into(),
            cors_origins: String::new(),
            trusted_proxies: String::new(),
            log_format: "pretty".into(),
            audience: None,
            password_min_length: "8".into(),
            // Out of the way of the suite's many requests from 127.0.0.1; the
            // limit tests set their own.
            rate_limit_per_minute: "100000".into(),
            login_backoff_after: "5".into(),
            cookie_domain: None,
            cookie_samesite: "lax".into(),
            jwks_max_age: "300".into(),
            request_timeout: "30".into(),
        }
    }
}

impl Settings {
    /// Warnings worth logging at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, ttl) in [
            ("GATEHOUSE_ACCESS_TOKEN_TTL", self.access_token_ttl),
            ("GATEHOUSE_REFRESH_TOKEN_TTL", self.refresh_token_ttl),
            ("GATEHOUSE_SESSION_MAX_AGE", self.session_max_age),
        ] {
            if ttl < 60 {
                out.push(format!("{name} is {ttl} s, below one minute"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::for_tests(std::path::Path::new("/tmp"), "sqlite://x.db")
    }

    #[test]
    fn bad_values_name_their_variable() {
        type Breaker = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("GATEHOUSE_LISTEN", Box::new(|c| c.listen = "nowhere".into())),
            (
                "GATEHOUSE_ACCESS_TOKEN_TTL",
                Box::new(|c| c.access_token_ttl = "-5".into()),
            ),
            (
                "GATEHOUSE_REFRESH_TOKEN_TTL",
                Box::new(|c| c.refresh_token_ttl = "soon".into()),
            ),
            (
                "GATEHOUSE_ISSUER",
                Box::new(|c| c.issuer = Some("ftp://x".into())),
            ),
            ("GATEHOUSE_LOG_FORMAT", Box::new(|c| c.log_format = "xml".into())),
            (
                "GATEHOUSE_TRUSTED_PROXIES",
                Box::new(|c| c.trusted_proxies = "10.0.0.0/99".into()),
            ),
            (
                "GATEHOUSE_CORS_ORIGINS",
                Box::new(|c| c.cors_origins = "*".into()),
            ),
            (
                "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
                Box::new(|c| c.require_verified_email = "maybe".into()),
            ),
            (
                "GATEHOUSE_DATABASE_URL",
                Box::new(|c| c.database_url = "mysql://x".into()),
            ),
            (
                "GATEHOUSE_PASSWORD_MIN_LENGTH",
                Box::new(|c| c.password_min_length = "4".into()),
            ),
        ];
        for (variable, break_it) in cases {
            let mut c = config();
            break_it(&mut c);
            let err = c.settings().expect_err(variable);
            assert_eq!(err.variable, variable);
            assert!(err.to_string().starts_with(variable), "{err}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let s = config().settings().unwrap();
        assert_eq!(s.access_token_ttl, 900);
        assert!(s.require_verified_email);
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
