//! The admin API: only for the role `admin`; users, clients, keys.

use serde_json::{Value, json};

use crate::helpers::*;

/// An app with an admin signed in; returns the admin's access token.
async fn admin_app() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("root@example.com").await;
    app.cli(&[
        "users",
        "set-role",
        "--email",
        "root@example.com",
        "--role",
        "admin",
    ])
    .await;
    let login = app.login(&client, "root@example.com", None).await;
    (app, login["access_token"].as_str().unwrap().to_owned())
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_admin_route_refuses_non_admins() {
    let (app, _) = admin_app().await;
    let client = app.web_client().await;
    let id = app.create_user("ada@example.com").await;
    let login = app.login(&client, "ada@example.com", None).await;
    let user_token = login["access_token"].as_str().unwrap();
    let routes = [
        ("GET", "/admin/users".to_owned(), None),
        ("GET", format!("/admin/users/{id}"), None),
        ("DELETE", format!("/admin/users/{id}"), None),
        (
            "PUT",
            format!("/admin/users/{id}/roles"),
            Some(json!({"roles": ["admin"]})),
        ),
        ("POST", format!("/admin/users/{id}/disable"), None),
        ("POST", format!("/admin/users/{id}/enable"), None),
        ("GET", "/admin/clients".to_owned(), None),
        (
            "POST",
            "/admin/clients".to_owned(),
            Some(json!({"name": "x", "grant_types": ["password"]})),
        ),
        ("GET", format!("/admin/clients/{}", client.id), None),
        (
            "PATCH",
            format!("/admin/clients/{}", client.id),
            Some(json!({"name": "y"})),
        ),
        ("DELETE", format!("/admin/clients/{}", client.id), None),
        ("POST", format!("/admin/clients/{}/secret", client.id), None),
        ("GET", "/admin/keys".to_owned(), None),
        ("POST", "/admin/keys/rotate".to_owned(), None),
    ];
    for (method, path, body) in routes {
        let resp = call(&app, method, &path, user_token, body.clone()).await;
        assert_eq!(resp.status(), 403, "{method} {path}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let resp = call(&app, method, &path, "not-a-token", body).await;
        assert_eq!(resp.status(), 401, "{method} {path} without a valid token");
    }
    // Nothing changed.
    assert_eq!(app.cli(&["users", "list"]).await.as_array().unwrap().len(), 2);
    assert_eq!(
        app.token(
            &client,
            &[
                ("grant_type", "password"),
                ("username", "ada@example.com"),
                ("password", PASSWORD)
            ]
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn users_page_through_with_a_cursor() {
    let (app, admin) = admin_app().await;
    for i in 0..4 {
        app.create_user(&format!("u{i}@example.com")).await;
    }

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let resp = call(
            &app,
            "GET",
            &format!("/admin/users?limit=2&cursor={cursor}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(resp.status(), 200);
        let page: Value = resp.json().await.unwrap();
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().map(|u| u["email"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen.len(), 5, "{seen:?}");
    seen.dedup();
    assert_eq!(seen.len(), 5, "no user twice");

    let resp = call(&app, "GET", "/admin/users?limit=0", &admin, None).await;
    assert_eq!(resp.status(), 422);
}

#[tokio::test]
async fn roles_disable_enable_and_delete_take_effect() {
    let (app, admin) = admin_app().await;
    let client = app.web_client().await;
    let id = app.create_user("ada@example.com").await;

    let resp = call(
        &app,
        "PUT",
        &format!("/admin/users/{id}/roles"),
        &admin,
        Some(json!({"roles": ["billing", "support"]})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let login = app.login(&client, "ada@example.com", None).await;
    let (_, claims) = jwt_parts(login["access_token"].as_str().unwrap());
    assert_eq!(claims["roles"], json!(["billing", "support"]));
    let resp = call(
        &app,
        "PUT",
        &format!("/admin/users/{id}/roles"),
        &admin,
        Some(json!({"roles": ["Bad Role"]})),
    )
    .await;
    assert_eq!(resp.status(), 422);

    let resp = call(&app, "POST", &format!("/admin/users/{id}/disable"), &admin, None).await;
    assert_eq!(resp.json::<Value>().await.unwrap()["disabled"], true);
    assert_eq!(
        app.refresh(&client, login["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
    let form = [
        ("grant_type", "password"),
        ("username", "ada@example.com"),
        ("password", PASSWORD),
    ];
    assert_eq!(app.token(&client, &form).await.status(), 400);
    call(&app, "POST", &format!("/admin/users/{id}/enable"), &admin, None).await;
    assert_eq!(app.token(&client, &form).await.status(), 200);

    assert_eq!(
        call(&app, "DELETE", &format!("/admin/users/{id}"), &admin, None)
            .await
            .status(),
        204
    );
    assert_eq!(
        call(&app, "GET", &format!("/admin/users/{id}"), &admin, None)
            .await
            .status(),
        404
    );
    assert_eq!(
        call(&app, "GET", "/admin/users/not-a-uuid", &admin, None)
            .await
            .status(),
        404
    );
    let db = gatehouse::store::Db::connect(&app.config.database_url)
        .await
        .unwrap();
    let (rows,): (i64,) = sqlx::query_as("select count(*) from login_session where user_id = $1")
        .bind(&id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let (rows,): (i64,) = sqlx::query_as("select count(*) from user_account where id = $1")
        .bind(&id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    db.close().await;
}

#[tokio::test]
async fn clients_are_managed_and_their_secret_shown_once() {
    let (app, admin) = admin_app().await;

    let resp = call(
        &app,
        "POST",
        "/admin/clients",
        &admin,
        Some(json!({"name": "api", "grant_types": ["client_credentials"], "scopes": ["read"]})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    let api = TestClient {
        id: id.clone(),
        secret: Some(secret),
    };
    assert_eq!(
        app.token(&api, &[("grant_type", "client_credentials")])
            .await
            .status(),
        200
    );

    let fetched: Value = call(&app, "GET", &format!("/admin/clients/{id}"), &admin, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(fetched.get("client_secret").is_none() || fetched["client_secret"].is_null());
    assert_eq!(fetched["scopes"], json!(["read"]));

    let resp = call(
        &app,
        "PATCH",
        &format!("/admin/clients/{id}"),
        &admin,
        Some(json!({"scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(
        resp.json::<Value>().await.unwrap()["scopes"],
        json!(["read", "write"])
    );

    let rotated: Value = call(&app, "POST", &format!("/admin/clients/{id}/secret"), &admin, None)
        .await
        .json()
        .await
        .unwrap();
    let fresh = TestClient {
        id: id.clone(),
        secret: rotated["client_secret"].as_str().map(str::to_owned),
    };
    assert_eq!(
        app.token(&api, &[("grant_type", "client_credentials")])
            .await
            .status(),
        401
    );
    assert_eq!(
        app.token(&fresh, &[("grant_type", "client_credentials")])
            .await
            .status(),
        200
    );

    let bad = call(
        &app,
        "POST",
        "/admin/clients",
        &admin,
        Some(json!({"grant_types": ["implicit"], "public": true})),
    )
    .await;
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"name") && fields.contains(&"grant_types"),
        "{fields:?}"
    );

    assert_eq!(
        call(&app, "DELETE", &format!("/admin/clients/{id}"), &admin, None)
            .await
            .status(),
        204
    );
    assert_eq!(
        app.token(&fresh, &[("grant_type", "client_credentials")])
            .await
            .status(),
        401
    );
    let all: Value = call(&app, "GET", "/admin/clients", &admin, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "only the web client of admin_app is left"
    );
}

#[tokio::test]
async fn keys_are_listed_and_rotated() {
    let (app, admin) = admin_app().await;

    let resp = call(&app, "POST", "/admin/keys/rotate", &admin, None).await;
    assert_eq!(resp.status(), 201);
    let new: Value = resp.json().await.unwrap();
    assert_eq!(new["state"], "pending");

    let keys: Value = call(&app, "GET", "/admin/keys", &admin, None)
        .await
        .json()
        .await
        .unwrap();
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "pending"]);
}
