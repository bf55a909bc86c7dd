//! An SMTP server inside the test run: it accepts every message, records it,
//! and can be stopped and started again on the same port to play an outage,
//! or answer `451` after `DATA` to play a server that defers mail.
//!
//! [`ReceivedMail`] decodes what arrived (or an `.eml` file from the outbox):
//! headers, and the text and HTML parts with their transfer encoding undone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What one SMTP transaction delivered.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as received, dot-unstuffed, CRLF line ends.
    pub data: String,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Envelope>>,
    /// Messages answered with `451` while deferring.
    deferred: Mutex<Vec<Envelope>>,
    defer: AtomicBool,
}

pub struct SmtpSink {
    pub port: u16,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let port = listener.local_addr().expect("sink address").port();
        let shared = Arc::new(Shared::default());
        let task = Some(tokio::spawn(serve(listener, shared.clone())));
        SmtpSink { port, shared, task }
    }

    /// `smtp://127.0.0.1:<port>`, for `GATEHOUSE_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Closes the port and every open connection: connections are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the SMTP sink again on its port");
        self.task = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }

    /// While on, every message is read and then answered `451` (recorded in
    /// [`SmtpSink::deferred`]), as a server with a temporary problem does.
    pub fn defer(&self, on: bool) {
        self.shared.defer.store(on, Ordering::SeqCst);
    }

    pub fn envelopes(&self) -> Vec<Envelope> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Every message accepted so far, in order of arrival.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.envelopes()
            .iter()
            .map(|e| ReceivedMail::parse(&e.data))
            .collect()
    }

    /// Every message answered `451` so far.
    pub fn deferred(&self) -> Vec<ReceivedMail> {
        let deferred = self.shared.deferred.lock().unwrap().clone();
        deferred.iter().map(|e| ReceivedMail::parse(&e.data)).collect()
    }

    /// Waits until at least `count` messages were accepted; panics after `within`.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} messages arrived within {within:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last message accepted for `recipient`, waiting up to `within` for one.
    pub async fn last_mail_to(&self, recipient: &str, within: Duration) -> ReceivedMail {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let envelopes = self.envelopes();
            if let Some(e) = envelopes
                .iter()
                .rev()
                .find(|e| e.rcpt_to.iter().any(|r| r == recipient))
            {
                return ReceivedMail::parse(&e.data);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no mail to {recipient} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(session(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One SMTP session (RFC 5321), just enough for lettre.
async fn session(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut envelope = Envelope {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: String::new(),
    };
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let argument = |prefix: &str| {
            command
                .get(prefix.len()..)
                .unwrap_or_default()
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => b"250 sink.test\r\n",
            "MAIL" => {
                envelope.mail_from = argument("MAIL FROM:");
                envelope.rcpt_to.clear();
                b"250 2.1.0 OK\r\n"
            }
            "RCPT" => {
                envelope.rcpt_to.push(argument("RCPT TO:"));
                b"250 2.1.5 OK\r\n"
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                envelope.data = read_data(&mut read).await?;
                if shared.defer.load(Ordering::SeqCst) {
                    shared.deferred.lock().unwrap().push(envelope.clone());
                    b"451 4.3.0 try again later\r\n"
                } else {
                    shared.received.lock().unwrap().push(envelope.clone());
                    b"250 2.0.0 queued\r\n"
                }
            }
            "RSET" => {
                envelope.rcpt_to.clear();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.1 not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// Reads message data up to the lone `.` line, undoing dot-stuffing.
async fn read_data(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<String> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == ".\r\n" || line == ".\n" {
            return Ok(data);
        }
        data.push_str(line.strip_prefix('.').unwrap_or(&line));
    }
}

/// A received message, decoded enough for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub raw: String,
    /// Header names lowercased; unfolded values.
    pub headers: HashMap<String, String>,
    /// The decoded `text/plain` part.
    pub text: Option<String>,
    /// The decoded `text/html` part.
    pub html: Option<String>,
}

impl ReceivedMail {
    pub fn parse(raw: &str) -> ReceivedMail {
        let (headers, body) = split_entity(raw);
        let mut mail = ReceivedMail {
            raw: raw.to_owned(),
            headers: headers.clone(),
            text: None,
            html: None,
        };
        let mut collect = |headers: &HashMap<String, String>, body: &str| {
            let content_type = headers
                .get("content-type")
                .map(String::as_str)
                .unwrap_or("text/plain");
            let decoded = decode_body(headers, body);
            if content_type.starts_with("text/plain") {
                mail.text = Some(decoded);
            } else if content_type.starts_with("text/html") {
                mail.html = Some(decoded);
            }
        };
        let content_type = headers.get("content-type").cloned().unwrap_or_default();
        match boundary(&content_type) {
            Some(boundary) => {
                let delimiter = format!("--{boundary}");
                for part in body.split(delimiter.as_str()).skip(1) {
                    if part.starts_with("--") {
                        break;
                    }
                    let part = part.strip_prefix("\r\n").unwrap_or(part);
                    let (part_headers, part_body) = split_entity(part);
                    collect(&part_headers, part_body);
                }
            }
            None => collect(&headers, body),
        }
        mail
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn message_id(&self) -> String {
        self.header("message-id").expect("a Message-ID header").to_owned()
    }

    /// The first link in the text part that starts with `prefix`, e.g.
    /// `http://127.0.0.1:1234/verify-email?token=`.
    pub fn link(&self, prefix: &str) -> Option<String> {
        let text = self.text.as_deref()?;
        let start = text.find(prefix)?;
        let link = text[start..]
            .split(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '"')
            .next()?;
        Some(link.to_owned())
    }

    /// The `token` query parameter of the first link to `path` (e.g. `/verify-email`).
    pub fn token(&self, path: &str) -> Option<String> {
        let text = self.text.as_deref()?;
        let marker = format!("{path}?token=");
        let start = text.find(&marker)? + marker.len();
        let token = text[start..]
            .split(|c: char| c.is_whitespace() || c == '&' || c == '<' || c == '"')
            .next()?;
        Some(token.to_owned())
    }
}

/// Splits headers from body; header names lowercased, folded lines joined.
fn split_entity(raw: &str) -> (HashMap<String, String>, &str) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""));
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(value) = last.as_ref().and_then(|name| headers.get_mut(name)) {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            headers.insert(name.clone(), value.trim().to_owned());
            last = Some(name);
        }
    }
    (headers, body)
}

fn boundary(content_type: &str) -> Option<String> {
    if !content_type.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    let (_, rest) = content_type.split_once("boundary=")?;
    let value = rest.split(';').next()?.trim().trim_matches('"');
    Some(value.to_owned())
}

fn decode_body(headers: &HashMap<String, String>, body: &str) -> String {
    let encoding = headers
        .get("content-transfer-encoding")
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let body = body.strip_suffix("\r\n").unwrap_or(body);
    match encoding.as_str() {
        "base64" => {
            use base64::Engine;
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .expect("valid base64 body");
            String::from_utf8(bytes).expect("UTF-8 body")
        }
        "quoted-printable" => decode_quoted_printable(body),
        _ => body.to_owned(),
    }
}

/// RFC 2045 §6.7: `=XX` escapes and `=` soft line breaks.
fn decode_quoted_printable(body: &str) -> String {
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if bytes[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII escape");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 body")
}

#[tokio::test]
async fn quoted_printable_and_multipart_are_decoded() {
    let raw = "Message-ID: <a@b>\r\nContent-Type: multipart/alternative;\r\n boundary=\"XyZ\"\r\n\r\n\
               --XyZ\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
               http://x/verify-email?token=3Dab=\r\ncd caf=C3=A9\r\n--XyZ\r\nContent-Type: text/html; charset=utf-8\r\n\
               Content-Transfer-Encoding: base64\r\n\r\nPHA+aGk8L3A+\r\n--XyZ--\r\n";
    let mail = ReceivedMail::parse(raw);
    assert_eq!(mail.message_id(), "<a@b>");
    assert_eq!(
        mail.text.as_deref(),
        Some("http://x/verify-email?token=abcd café")
    );
    assert_eq!(mail.token("/verify-email").as_deref(), Some("abcd"));
    assert_eq!(mail.html.as_deref(), Some("<p>hi</p>"));
}
