//! The mail sender: delivery over SMTP and to the outbox, retries through an
//! outage with a stable Message-ID, one delivery with two instances, and the
//! bodies deleted once sent or expired (SPEC §2, §6).

use std::time::{Duration, Instant};

use gatehouse::mail::templates;
use gatehouse::store::Db;

use crate::helpers::TestApp;
use crate::smtp_sink::{ReceivedMail, SmtpSink};

/// One row of `mail_message`, as the tests look at it.
#[derive(Debug, sqlx::FromRow)]
struct MailRow {
    id: String,
    body_text: Option<String>,
    body_html: Option<String>,
    sent_at: Option<i64>,
    attempts: i64,
    last_error: Option<String>,
}

async fn db(app: &TestApp) -> Db {
    Db::connect(&app.config.database_url)
        .await
        .expect("connect to the test database")
}

/// Queues a verification mail to `to` the way the account flows do; returns its row id.
async fn queue(db: &Db, app: &TestApp, to: &str, expires_in: i64) -> (String, String) {
    let link = format!(
        "{}/verify-email?token=ghv_{}",
        app.base,
        uuid::Uuid::new_v4().simple()
    );
    let now = gatehouse::now();
    let mut tx = db.begin_write().await.unwrap();
    gatehouse::mail::enqueue(
        tx.conn(),
        to,
        None,
        &templates::verify_email(&link),
        now,
        now + expires_in,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (id,): (String,) = sqlx::query_as("select id from mail_message where recipient = $1")
        .bind(to)
        .fetch_one(db.pool())
        .await
        .unwrap();
    (id, link)
}

async fn mail_row(db: &Db, id: &str) -> MailRow {
    sqlx::query_as::<_, MailRow>(
        "select id, body_text, body_html, sent_at, attempts, last_error from mail_message where id = $1",
    )
    .bind(id)
    .fetch_one(db.pool())
    .await
    .unwrap()
}

/// Polls the row until `done` holds; panics after `within`.
async fn wait_for_row(db: &Db, id: &str, within: Duration, done: impl Fn(&MailRow) -> bool) -> MailRow {
    let deadline = Instant::now() + within;
    loop {
        let row = mail_row(db, id).await;
        if done(&row) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "row never reached the state wanted: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn expected_message_id(id: &str) -> String {
    format!("<{id}@127.0.0.1>")
}

async fn spawn_with_smtp(sink: &SmtpSink) -> TestApp {
    let url = sink.url();
    TestApp::spawn_with(|c| c.smtp_url = Some(url)).await
}

#[tokio::test]
async fn queued_mail_arrives_within_two_seconds_with_both_parts_and_its_body_is_then_deleted() {
    let sink = SmtpSink::start().await;
    let app = spawn_with_smtp(&sink).await;
    let db = db(&app).await;

    let queued = Instant::now();
    let (id, link) = queue(&db, &app, "ada@example.com", 3600).await;
    let mail = sink.last_mail_to("ada@example.com", Duration::from_secs(2)).await;
    let elapsed = queued.elapsed();

    assert!(elapsed <= Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(mail.message_id(), expected_message_id(&id));
    assert_eq!(mail.header("to"), Some("ada@example.com"));
    assert_eq!(mail.header("from"), Some("gatehouse <no-reply@localhost>"));
    assert_eq!(mail.header("subject"), Some("Confirm your e-mail address"));
    assert!(
        mail.header("content-type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    assert!(mail.text.as_deref().unwrap().contains(&link), "{:?}", mail.text);
    assert!(
        mail.html
            .as_deref()
            .unwrap()
            .contains(&format!("href=\"{link}\"")),
        "{:?}",
        mail.html
    );
    assert_eq!(
        mail.link(&format!("{}/verify-email?token=", app.base)),
        Some(link.clone())
    );
    assert_eq!(sink.envelopes()[0].mail_from, "no-reply@localhost");
    assert!(mail.raw.contains("\r\nAuto-Submitted: auto-generated\r\n"));

    let row = wait_for_row(&db, &id, Duration::from_secs(2), |r| r.sent_at.is_some()).await;
    assert_eq!(row.body_text, None);
    assert_eq!(row.body_html, None);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error, None);
}

#[tokio::test]
async fn mail_queued_while_smtp_is_down_is_delivered_once_when_it_returns_with_the_same_message_id() {
    let mut sink = SmtpSink::start().await;
    let app = spawn_with_smtp(&sink).await;
    let db = db(&app).await;

    // First attempt: the server reads the message but defers it (451).
    sink.defer(true);
    let (id, link) = queue(&db, &app, "bob@example.com", 3600).await;
    let deferred = wait_for(Duration::from_secs(3), || sink.deferred().first().cloned()).await;
    let first = wait_for_row(&db, &id, Duration::from_secs(3), |r| r.last_error.is_some()).await;
    // Second attempt: nobody listens at all. Its own error, not the first
    // one still on the row while it runs, shows it is over.
    sink.stop().await;
    let row = wait_for_row(&db, &id, Duration::from_secs(6), |r| {
        r.attempts >= 2 && r.last_error.is_some() && r.last_error != first.last_error
    })
    .await;
    assert_eq!(row.sent_at, None);
    assert!(row.body_text.is_some(), "an unsent message keeps its body");
    let error = row.last_error.unwrap();
    assert!(!error.contains("token"), "{error}");
    assert!(sink.received().is_empty());

    // SMTP is back: the next retry goes through, once.
    sink.defer(false);
    sink.restart().await;
    let received = sink.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let received_after = sink.received();
    assert_eq!(received_after.len(), 1, "delivered more than once");
    assert_eq!(received[0].message_id(), expected_message_id(&id));
    assert_eq!(received[0].message_id(), deferred.message_id());
    assert!(received[0].text.as_deref().unwrap().contains(&link));
    let row = wait_for_row(&db, &id, Duration::from_secs(2), |r| r.sent_at.is_some()).await;
    assert_eq!(row.body_text, None);
    assert!(row.attempts >= 3, "{row:?}");
}

#[tokio::test]
async fn without_smtp_each_message_is_written_to_the_outbox_as_an_eml_file() {
    let app = TestApp::spawn().await;
    let db = db(&app).await;

    let (id, link) = queue(&db, &app, "cy@example.com", 3600).await;
    let path = app.config.mail_outbox.join(format!("{id}.eml"));
    let raw = wait_for(Duration::from_secs(3), || std::fs::read_to_string(&path).ok()).await;

    let mail = ReceivedMail::parse(&raw);
    assert_eq!(mail.message_id(), expected_message_id(&id));
    assert_eq!(mail.header("to"), Some("cy@example.com"));
    assert!(mail.text.as_deref().unwrap().contains(&link));
    assert!(mail.html.as_deref().unwrap().contains(&link));
    let row = wait_for_row(&db, &id, Duration::from_secs(2), |r| r.sent_at.is_some()).await;
    assert_eq!(row.body_text, None);
    let files = std::fs::read_dir(&app.config.mail_outbox).unwrap().count();
    assert_eq!(files, 1, "no temporary file is left behind");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the file holds a live link: owner only");
    }
}

#[tokio::test]
async fn two_instances_on_one_database_deliver_each_message_once() {
    let sink = SmtpSink::start().await;
    let app = spawn_with_smtp(&sink).await;
    let sibling = app.spawn_sibling().await;
    let db = db(&app).await;

    let mut ids = Vec::new();
    for n in 0..10 {
        let (id, _) = queue(&db, &app, &format!("user{n}@example.com"), 3600).await;
        ids.push(expected_message_id(&id));
    }
    sink.wait_for(ids.len(), Duration::from_secs(8)).await;
    // Give a duplicate time to show up.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut received: Vec<String> = sink.received().iter().map(ReceivedMail::message_id).collect();
    received.sort();
    ids.sort();
    assert_eq!(received, ids, "each message exactly once");
    drop(sibling);
}

#[tokio::test]
async fn expired_mail_is_never_sent_and_its_body_is_deleted() {
    let app = TestApp::spawn().await;
    let db = db(&app).await;
    // Queue one whose token is already dead, then start an instance: its
    // sender sweeps expired bodies as it starts.
    let (id, _) = queue(&db, &app, "dee@example.com", -1).await;
    let _sibling = app.spawn_sibling().await;

    let row = wait_for_row(&db, &id, Duration::from_secs(3), |r| r.body_text.is_none()).await;
    assert_eq!(row.body_html, None);
    assert_eq!(row.sent_at, None);
    assert_eq!(row.attempts, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!app.config.mail_outbox.join(format!("{id}.eml")).exists());
    assert_eq!(row.id, id);
}

/// Polls `probe` until it yields; panics after `within`.
async fn wait_for<T>(within: Duration, probe: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "nothing within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
