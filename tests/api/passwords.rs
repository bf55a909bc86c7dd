//! The password policy (SPEC §6, NIST SP 800-63B): the common-password list,
//! U+0000, NFKC at creation and at login, and upgrading weak hashes.

use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde_json::Value;
use sqlx::{Connection as _, Row as _};

use crate::helpers::*;

async fn create_user_with(app: &TestApp, email: &str, password: &str) -> anyhow::Result<Value> {
    app.try_cli(
        &[
            "users",
            "create",
            "--email",
            email,
            "--password-stdin",
            "--verified",
        ],
        password,
    )
    .await
}

async fn login_status(app: &TestApp, client: &TestClient, email: &str, password: &str) -> u16 {
    app.token(
        client,
        &[
            ("grant_type", "password"),
            ("username", email),
            ("password", password),
        ],
    )
    .await
    .status()
    .as_u16()
}

async fn db(app: &TestApp) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&app.config.database_url)
        .await
        .expect("connect to the test database")
}

async fn stored_hash(app: &TestApp, email_lower: &str) -> String {
    let mut conn = db(app).await;
    let row = sqlx::query("select password_hash from user_account where email_lower = $1")
        .bind(email_lower)
        .fetch_one(&mut conn)
        .await
        .expect("the user's row");
    let hash: String = row.get(0);
    let _ = conn.close().await;
    hash
}

#[tokio::test]
async fn users_create_refuses_common_and_nul_passwords() {
    let app = TestApp::spawn().await;

    let cases = [
        ("on the list", "password123", "common"),
        ("on the list in other case", "PassWord123", "common"),
        ("on the list after NFKC", "ｐａｓｓｗｏｒｄ１２３", "common"),
        ("on the list, long", "qwertyuiop", "common"),
        ("U+0000", "a perfectly long\0password", "U+0000"),
        (
            "short after NFKC",
            "e\u{301}e\u{301}e\u{301}e\u{301}",
            "at least 8",
        ),
        ("too long", &"x".repeat(129), "at most 128"),
    ];
    for (i, (label, password, says)) in cases.iter().enumerate() {
        let email = format!("user{i}@example.com");
        let err = create_user_with(&app, &email, password).await.expect_err(label);
        let message = format!("{err:#}");
        assert!(message.contains(says), "{label}: {message}");
    }
    // Nothing was stored.
    assert_eq!(app.cli(&["users", "list"]).await, serde_json::json!([]));

    // No composition rules: a long all-lowercase passphrase is fine.
    create_user_with(&app, "ok@example.com", PASSWORD)
        .await
        .expect("an uncommon passphrase is accepted");
}

#[tokio::test]
async fn a_password_logs_in_whichever_unicode_form_is_typed() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;

    // Created with ligatures (U+FB01 "ﬁ") and full-width letters, which NFKC
    // turns into "fi" and "AB": logging in with the plain form works …
    let odd = "\u{FB01}ve \u{FB01}sh, \u{FF21}\u{FF22} and chips";
    let plain = "five fish, AB and chips";
    create_user_with(&app, "ada@example.com", odd).await.unwrap();
    assert_eq!(login_status(&app, &client, "ada@example.com", plain).await, 200);
    assert_eq!(login_status(&app, &client, "ada@example.com", odd).await, 200);

    // … and the other way round, with a decomposed accent too.
    create_user_with(&app, "bob@example.com", "caf\u{E9} five fish")
        .await
        .unwrap();
    for typed in [
        "caf\u{E9} \u{FB01}ve \u{FB01}sh",
        "cafe\u{301} five fish",
        "caf\u{E9} five fish",
    ] {
        assert_eq!(
            login_status(&app, &client, "bob@example.com", typed).await,
            200,
            "{typed:?}"
        );
    }

    // Normalisation is not case folding.
    assert_eq!(
        login_status(&app, &client, "ada@example.com", "FIVE FISH, AB AND CHIPS").await,
        400
    );
}

#[tokio::test]
async fn a_weak_hash_is_upgraded_at_the_next_successful_login() {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("ada@example.com").await;

    // Put back a hash made with far weaker parameters, as an old release or
    // an import might have left it.
    let weak = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(1024, 1, 1, None).unwrap(),
    )
    .hash_password(
        PASSWORD.as_bytes(),
        &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
    )
    .unwrap()
    .to_string();
    assert!(weak.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{weak}");
    let mut conn = db(&app).await;
    let changed = sqlx::query("update user_account set password_hash = $1 where email_lower = $2")
        .bind(&weak)
        .bind("ada@example.com")
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1);
    let _ = conn.close().await;

    // A wrong password changes nothing.
    assert_eq!(
        login_status(&app, &client, "ada@example.com", "not the password").await,
        400
    );
    assert_eq!(stored_hash(&app, "ada@example.com").await, weak);

    // The right one logs in and leaves a hash with today's parameters …
    app.login(&client, "ada@example.com", None).await;
    let upgraded = stored_hash(&app, "ada@example.com").await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );

    // … that still verifies, and is not rewritten again.
    app.login(&client, "ada@example.com", None).await;
    assert_eq!(stored_hash(&app, "ada@example.com").await, upgraded);
}
