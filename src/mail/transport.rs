//! The [`Mailer`]: turns a queued message into an RFC 5322 message and hands
//! it to the SMTP server of `GATEHOUSE_SMTP_URL`, or writes it as an `.eml`
//! file in `GATEHOUSE_MAIL_OUTBOX` when no SMTP server is set.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{ConfigError, Settings};
use crate::store::mail::ClaimedMailRow;

/// Each read or write on the SMTP connection gives up after this.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole SMTP conversation gives up after this, however slowly it trickles.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// `last_error` is kept short.
const MAX_ERROR_LEN: usize = 300;

/// Where messages go.
enum Transport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// For logs: the host and port only, never the credentials.
        server: String,
    },
    Outbox {
        dir: PathBuf,
    },
}

/// Delivers messages; built once at start-up from the settings.
pub struct Mailer {
    from: Mailbox,
    /// Right-hand side of every `Message-ID`.
    message_id_host: String,
    transport: Transport,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("transport", &self.describe())
            .finish()
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The message itself can never be sent (e.g. an unparsable address);
    /// retrying is pointless.
    #[error("{0}")]
    Undeliverable(String),
    /// The server or the outbox failed; try again later. Even permanent SMTP
    /// replies land here: a wrong password or a relay refusing our sender is
    /// an operator's fix away, and the message must survive it.
    #[error("{0}")]
    Failed(String),
}

impl DeliveryError {
    fn undeliverable(e: impl fmt::Display) -> DeliveryError {
        DeliveryError::Undeliverable(short(e))
    }

    fn failed(e: impl fmt::Display) -> DeliveryError {
        DeliveryError::Failed(short(e))
    }
}

/// The error text stored in `last_error`: one line, bounded.
fn short(e: impl fmt::Display) -> String {
    let text = e.to_string().replace(['\r', '\n'], " ");
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `Auto-Submitted: auto-generated` (RFC 3834 §5): asks auto-responders not to reply.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

/// The host part of `url` (no scheme, credentials, port or path), usable as
/// the right-hand side of a `Message-ID`; `"gatehouse"` when there is none.
pub fn message_id_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        // An IPv6 literal stays bracketed: RFC 5322 `no-fold-literal`.
        host_port.split_inclusive(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':');
    if host.is_empty() || !host.chars().all(valid) {
        "gatehouse".to_owned()
    } else {
        host.to_ascii_lowercase()
    }
}

/// `<{id}@{host}>`: the same on every attempt, so a recipient's mail system
/// can recognise a message delivered twice.
pub fn message_id(id: &str, host: &str) -> String {
    format!("<{id}@{host}>")
}

impl Mailer {
    /// Builds the mailer from `GATEHOUSE_SMTP_URL`, `GATEHOUSE_MAIL_OUTBOX`
    /// and `GATEHOUSE_MAIL_FROM`; `public_url` (the resolved base of links)
    /// names the host in `Message-ID`s. Creates the outbox when it is used.
    pub fn from_settings(settings: &Settings, public_url: &str) -> Result<Mailer, ConfigError> {
        let from = settings.mail_from.parse::<Mailbox>().map_err(|e| ConfigError {
            variable: "GATEHOUSE_MAIL_FROM",
            problem: format!("expected an address such as `gatehouse <no-reply@example.com>`: {e}"),
        })?;
        let transport = match &settings.smtp_url {
            Some(url) => smtp_transport(url.expose_secret())?,
            None => {
                let dir = settings.mail_outbox.clone();
                std::fs::create_dir_all(&dir).map_err(|e| ConfigError {
                    variable: "GATEHOUSE_MAIL_OUTBOX",
                    problem: format!("cannot create {}: {e}", dir.display()),
                })?;
                Transport::Outbox { dir }
            }
        };
        Ok(Mailer {
            from,
            message_id_host: message_id_host(public_url),
            transport,
        })
    }

    /// Where mail goes, for logs: `smtp host:port` or `outbox DIR`.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp { server, .. } => format!("smtp {server}"),
            Transport::Outbox { dir } => format!("outbox {}", dir.display()),
        }
    }

    /// The `Message-ID` of queued message `id`.
    pub fn message_id(&self, id: &str) -> String {
        message_id(id, &self.message_id_host)
    }

    /// The message as sent: From, To, Subject, a stable Message-ID and a
    /// multipart/alternative body with a text and an HTML part.
    pub fn compose(&self, mail: &ClaimedMailRow) -> Result<Message, DeliveryError> {
        let to = mail
            .recipient
            .parse::<Mailbox>()
            .map_err(|e| DeliveryError::undeliverable(format!("invalid recipient address: {e}")))?;
        Message::builder()
            .message_id(Some(self.message_id(&mail.id)))
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.as_str())
            .header(AutoSubmitted)
            .multipart(MultiPart::alternative_plain_html(
                mail.body_text.clone(),
                mail.body_html.clone(),
            ))
            .map_err(DeliveryError::undeliverable)
    }

    /// One delivery attempt.
    pub async fn deliver(&self, mail: &ClaimedMailRow) -> Result<(), DeliveryError> {
        let message = self.compose(mail)?;
        match &self.transport {
            Transport::Smtp { transport, .. } => {
                match tokio::time::timeout(SEND_TIMEOUT, transport.send(message)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(DeliveryError::failed(e)),
                    Err(_) => Err(DeliveryError::failed("timed out talking to the SMTP server")),
                }
            }
            Transport::Outbox { dir } => {
                let path = dir.join(format!("{}.eml", mail.id));
                let bytes = message.formatted();
                tokio::task::spawn_blocking(move || write_eml(&path, &bytes))
                    .await
                    .map_err(DeliveryError::failed)?
                    .map_err(DeliveryError::failed)
            }
        }
    }
}

/// `smtp://host[:port]` (plain, port 25), `smtp://host?tls=required` (STARTTLS,
/// port 587), `smtps://host` (implicit TLS, port 465); `user:pass@` for AUTH.
fn smtp_transport(url: &str) -> Result<Transport, ConfigError> {
    let bad = |problem: String| ConfigError {
        variable: "GATEHOUSE_SMTP_URL",
        problem,
    };
    // lettre's URL errors never quote the URL, so they cannot leak the password.
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| {
        bad(format!(
            "expected smtp://host:port, smtps://user:pass@host or smtp://host?tls=required: {e}"
        ))
    })?;
    let transport = builder.timeout(Some(SMTP_TIMEOUT)).build();
    let server = smtp_server(url);
    Ok(Transport::Smtp { transport, server })
}

/// `host:port` of an SMTP URL, without scheme, credentials or query.
fn smtp_server(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

/// Writes `bytes` to `path` atomically (a reader never sees half a message),
/// readable by the owner only: the body holds a live link.
fn write_eml(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("eml.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ClaimedMailRow {
        ClaimedMailRow {
            id: "0b6f1c1e-5b0a-4d52-9d55-7d1b2f0d9a10".into(),
            recipient: "Ada <ada@example.com>".into(),
            subject: "Confirm your e-mail address".into(),
            body_text: "Open http://x/verify-email?token=abc\n".into(),
            body_html: "<p><a href=\"http://x/verify-email?token=abc\">Open</a></p>".into(),
            attempts: 1,
        }
    }

    fn settings(smtp_url: Option<&str>, outbox: &Path) -> Settings {
        let mut config = crate::config::Config::for_tests(outbox, "sqlite://x.db");
        config.smtp_url = smtp_url.map(str::to_owned);
        config.mail_outbox = outbox.join("mail-outbox");
        config.settings().unwrap()
    }

    #[test]
    fn message_id_host_is_the_bare_host() {
        let cases = [
            ("https://id.example.com", "id.example.com"),
            ("http://127.0.0.1:8080", "127.0.0.1"),
            ("https://Auth.Example.COM:8443/base/path", "auth.example.com"),
            ("http://[::1]:8080", "[::1]"),
            ("https://user:pw@example.org/", "example.org"),
            ("", "gatehouse"),
            ("http://", "gatehouse"),
            ("http://bad host", "gatehouse"),
        ];
        for (url, want) in cases {
            assert_eq!(message_id_host(url), want, "{url}");
        }
        assert_eq!(
            message_id("0b6f1c1e-5b0a-4d52-9d55-7d1b2f0d9a10", "id.example.com"),
            "<0b6f1c1e-5b0a-4d52-9d55-7d1b2f0d9a10@id.example.com>"
        );
    }

    #[test]
    fn composed_message_has_stable_id_and_both_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::from_settings(&settings(None, dir.path()), "https://id.example.com").unwrap();
        let first = String::from_utf8(mailer.compose(&row()).unwrap().formatted()).unwrap();
        let again = String::from_utf8(mailer.compose(&row()).unwrap().formatted()).unwrap();
        let id_line = "Message-ID: <0b6f1c1e-5b0a-4d52-9d55-7d1b2f0d9a10@id.example.com>";
        assert!(first.contains(id_line), "{first}");
        assert!(again.contains(id_line));
        assert!(first.contains("multipart/alternative"));
        assert!(first.contains("text/plain"));
        assert!(first.contains("text/html"));
        assert!(first.contains("From: gatehouse <no-reply@localhost>"));
        assert!(first.contains("To: Ada <ada@example.com>"));
        assert!(first.contains("Auto-Submitted: auto-generated"));
    }

    #[test]
    fn bad_recipient_is_undeliverable() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::from_settings(&settings(None, dir.path()), "http://x").unwrap();
        let mut mail = row();
        mail.recipient = "not an address".into();
        assert!(matches!(
            mailer.compose(&mail),
            Err(DeliveryError::Undeliverable(_))
        ));
    }

    #[test]
    fn smtp_urls_are_accepted_and_described_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        for (url, described) in [
            ("smtp://127.0.0.1:2525", "smtp 127.0.0.1:2525"),
            ("smtp://mail.example.com?tls=required", "smtp mail.example.com"),
            ("smtps://user:s3cret@mail.example.com", "smtp mail.example.com"),
        ] {
            let mailer = Mailer::from_settings(&settings(Some(url), dir.path()), "http://x").unwrap();
            assert_eq!(mailer.describe(), described);
            assert!(!format!("{mailer:?}").contains("s3cret"));
        }
        let err = Mailer::from_settings(&settings(Some("smtp://"), dir.path()), "http://x").unwrap_err();
        assert_eq!(err.variable, "GATEHOUSE_SMTP_URL");
    }

    #[test]
    fn bad_from_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(None, dir.path());
        s.mail_from = "nobody".into();
        assert_eq!(
            Mailer::from_settings(&s, "http://x").unwrap_err().variable,
            "GATEHOUSE_MAIL_FROM"
        );
    }

    #[test]
    fn long_errors_are_cut_to_one_line() {
        let e = short(format!("a\r\nb{}", "x".repeat(1000)));
        assert!(!e.contains('\n'));
        assert_eq!(e.chars().count(), MAX_ERROR_LEN + 1);
    }
}
