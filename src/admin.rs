//! Administration shared by the admin API and the CLI: clients, users' roles
//! and status, signing keys. Validation failures are `422` field problems.

use poem::http::StatusCode;

use crate::config::Settings;
use crate::domain::{GrantType, RedirectUri, Role, Scope};
use crate::error::{Error, FieldProblem};
use crate::keys::{KeyState, RELOAD_SLACK, generate_and_store, key_states};
use crate::store::Db;
use crate::store::client::{self, Client};
use crate::store::key::{KeyRow, list_keys, retire_key as store_retire_key};
use crate::store::session::revoke_user_sessions;
use crate::store::user::{self, UserRow};
use crate::tokens::{OpaqueToken, TokenKind};

/// What a client is made or updated with.
#[derive(Debug, Default, Clone)]
pub struct ClientSpec {
    pub name: Option<String>,
    pub grants: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub public: bool,
    pub redirect_uris: Option<Vec<String>>,
    pub post_logout_redirect_uris: Option<Vec<String>>,
    pub first_party: Option<bool>,
}

fn parse_name(name: &str, problems: &mut Vec<FieldProblem>) -> String {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 || name.contains('\0') {
        problems.push(FieldProblem::new(
            "name",
            "invalid",
            "must be 1 to 200 characters",
        ));
    }
    name
}

fn parse_grants(grants: &[String], problems: &mut Vec<FieldProblem>) -> Vec<GrantType> {
    let mut parsed = Vec::new();
    if grants.is_empty() {
        problems.push(FieldProblem::new(
            "grant_types",
            "required",
            "name at least one grant",
        ));
    }
    for g in grants {
        match GrantType::parse(g) {
            Some(grant) if !parsed.contains(&grant) => parsed.push(grant),
            Some(_) => {}
            None => problems.push(FieldProblem::new(
                "grant_types",
                "unknown_grant",
                format!("{g:?}: expected password, refresh_token, client_credentials or authorization_code"),
            )),
        }
    }
    parsed
}

fn parse_scopes(scopes: &[String], problems: &mut Vec<FieldProblem>) -> Scope {
    if scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        problems.push(FieldProblem::new(
            "scopes",
            "invalid_scope",
            "each scope is one non-empty token",
        ));
        return Scope::default();
    }
    Scope::parse(&scopes.join(" ")).unwrap_or_else(|e| {
        problems.push(FieldProblem::new("scopes", "invalid_scope", e));
        Scope::default()
    })
}

fn parse_uris(field: &'static str, uris: &[String], problems: &mut Vec<FieldProblem>) -> Vec<RedirectUri> {
    let mut parsed: Vec<RedirectUri> = Vec::new();
    if uris.len() > 20 {
        problems.push(FieldProblem::new(field, "too_many", "at most 20 URIs"));
    }
    for uri in uris {
        match RedirectUri::parse(uri) {
            Ok(uri) if !parsed.contains(&uri) => parsed.push(uri),
            Ok(_) => {}
            Err(e) => problems.push(FieldProblem::new(
                field,
                "invalid_uri",
                format!("{:?}: {e}", uri.chars().take(100).collect::<String>()),
            )),
        }
    }
    parsed
}

/// Rules between fields: client_credentials needs a secret, and the
/// authorization code grant needs somewhere to send codes.
fn check_consistency(client: &Client, problems: &mut Vec<FieldProblem>) {
    if client.is_public() && client.has_grant(GrantType::ClientCredentials) {
        problems.push(FieldProblem::new(
            "grant_types",
            "public_client_credentials",
            "client_credentials needs a confidential client (RFC 6749 §4.4)",
        ));
    }
    if client.has_grant(GrantType::AuthorizationCode) && client.redirect_uris.is_empty() {
        problems.push(FieldProblem::new(
            "redirect_uris",
            "required",
            "the authorization_code grant needs at least one redirect URI",
        ));
    }
}

/// Registers a client; a confidential one gets a secret, shown once.
pub async fn create_client(
    db: &Db,
    spec: ClientSpec,
    now: i64,
) -> Result<(Client, Option<OpaqueToken>), Error> {
    let mut problems = Vec::new();
    let name = match &spec.name {
        Some(name) => parse_name(name, &mut problems),
        None => {
            problems.push(FieldProblem::new("name", "required", "is required"));
            String::new()
        }
    };
    let grants = parse_grants(spec.grants.as_deref().unwrap_or_default(), &mut problems);
    let scopes = parse_scopes(spec.scopes.as_deref().unwrap_or_default(), &mut problems);
    let redirect_uris = parse_uris(
        "redirect_uris",
        spec.redirect_uris.as_deref().unwrap_or_default(),
        &mut problems,
    );
    let post_logout_redirect_uris = parse_uris(
        "post_logout_redirect_uris",
        spec.post_logout_redirect_uris.as_deref().unwrap_or_default(),
        &mut problems,
    );
    let secret = (!spec.public).then(|| OpaqueToken::generate(TokenKind::ClientSecret));
    let client = Client {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        secret_digest: secret.as_ref().map(OpaqueToken::digest),
        grants,
        scopes,
        created_at: now,
        redirect_uris,
        post_logout_redirect_uris,
        first_party: spec.first_party.unwrap_or(false),
    };
    check_consistency(&client, &mut problems);
    if !problems.is_empty() {
        return Err(Error::validation(problems));
    }
    let mut tx = db.begin_write().await?;
    client::insert_client(tx.conn(), &client).await?;
    tx.commit().await?;
    tracing::info!(event = "client_created", client_id = %client.id, "client created");
    Ok((client, secret))
}

pub async fn find_client(db: &Db, id: &str) -> Result<Client, Error> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::not_found());
    }
    client::find_client(db.pool(), id)
        .await?
        .ok_or_else(Error::not_found)
}

/// Changes what is given; `public` cannot change.
pub async fn update_client(db: &Db, id: &str, spec: ClientSpec) -> Result<Client, Error> {
    let mut current = find_client(db, id).await?;
    let mut problems = Vec::new();
    if let Some(name) = &spec.name {
        current.name = parse_name(name, &mut problems);
    }
    if let Some(grants) = &spec.grants {
        current.grants = parse_grants(grants, &mut problems);
    }
    if let Some(scopes) = &spec.scopes {
        current.scopes = parse_scopes(scopes, &mut problems);
    }
    if let Some(uris) = &spec.redirect_uris {
        current.redirect_uris = parse_uris("redirect_uris", uris, &mut problems);
    }
    if let Some(uris) = &spec.post_logout_redirect_uris {
        current.post_logout_redirect_uris = parse_uris("post_logout_redirect_uris", uris, &mut problems);
    }
    if let Some(first_party) = spec.first_party {
        current.first_party = first_party;
    }
    check_consistency(&current, &mut problems);
    if !problems.is_empty() {
        return Err(Error::validation(problems));
    }
    let mut tx = db.begin_write().await?;
    if !client::update_client(tx.conn(), &current).await? {
        return Err(Error::not_found());
    }
    tx.commit().await?;
    Ok(current)
}

/// Deletes a client; its sessions and refresh tokens end with it.
pub async fn delete_client(db: &Db, id: &str) -> Result<(), Error> {
    find_client(db, id).await?;
    let mut tx = db.begin_write().await?;
    let deleted = client::delete_client(tx.conn(), id).await?;
    tx.commit().await?;
    if deleted { Ok(()) } else { Err(Error::not_found()) }
}

/// A new secret for a confidential client, shown once; the old one stops working.
pub async fn rotate_client_secret(db: &Db, id: &str) -> Result<OpaqueToken, Error> {
    let client = find_client(db, id).await?;
    if client.is_public() {
        return Err(Error::problem(
            StatusCode::CONFLICT,
            "public_client",
            "A public client has no secret",
        ));
    }
    let secret = OpaqueToken::generate(TokenKind::ClientSecret);
    let mut tx = db.begin_write().await?;
    client::update_client_secret(tx.conn(), id, &secret.digest()).await?;
    tx.commit().await?;
    tracing::info!(event = "client_secret_rotated", client_id = %id, "client secret rotated");
    Ok(secret)
}

/// Parses roles into their stored form (sorted, space-separated).
pub fn parse_roles(roles: &[String]) -> Result<String, Error> {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for r in roles {
        match Role::parse(r) {
            Ok(role) => parsed.push(role),
            Err(e) => problems.push(FieldProblem::new("roles", "invalid_role", format!("{r:?}: {e}"))),
        }
    }
    if !problems.is_empty() {
        return Err(Error::validation(problems));
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed.iter().map(Role::as_str).collect::<Vec<_>>().join(" "))
}

pub async fn find_user(db: &Db, id: &str) -> Result<UserRow, Error> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::not_found());
    }
    user::find_user(db.pool(), id).await?.ok_or_else(Error::not_found)
}

/// Replaces a user's roles; they show in the next access token.
pub async fn set_roles(db: &Db, id: &str, roles: &[String]) -> Result<UserRow, Error> {
    let roles = parse_roles(roles)?;
    find_user(db, id).await?;
    let mut tx = db.begin_write().await?;
    user::update_user_roles(tx.conn(), id, &roles).await?;
    let updated = user::find_user(tx.conn(), id)
        .await?
        .ok_or_else(Error::not_found)?;
    tx.commit().await?;
    Ok(updated)
}

/// Disables a user and ends every session at once, or enables them again.
pub async fn set_disabled(db: &Db, id: &str, disabled: bool, now: i64) -> Result<UserRow, Error> {
    find_user(db, id).await?;
    let mut tx = db.begin_write().await?;
    user::set_user_disabled(tx.conn(), id, disabled.then_some(now)).await?;
    if disabled {
        revoke_user_sessions(tx.conn(), id, now).await?;
    }
    let updated = user::find_user(tx.conn(), id)
        .await?
        .ok_or_else(Error::not_found)?;
    tx.commit().await?;
    tracing::info!(event = if disabled { "user_disabled" } else { "user_enabled" }, user_id = %id, "user status changed");
    Ok(updated)
}

/// Deletes a user with everything that hangs on them.
pub async fn delete_user(db: &Db, id: &str) -> Result<(), Error> {
    find_user(db, id).await?;
    let mut tx = db.begin_write().await?;
    user::delete_user(tx.conn(), id).await?;
    tx.commit().await?;
    tracing::info!(event = "user_deleted", user_id = %id, "user deleted");
    Ok(())
}

/// Every key with its state.
pub async fn keys(db: &Db, settings: &Settings, now: i64) -> Result<Vec<(KeyRow, KeyState)>, Error> {
    let rows = list_keys(db.pool()).await?;
    let states = key_states(&rows, now, settings.access_token_ttl);
    Ok(rows.into_iter().zip(states).collect())
}

/// Adds a key: published at once, signing once every cached JWKS knows it.
pub async fn rotate_key(db: &Db, settings: &Settings) -> Result<(String, i64), Error> {
    let (kid, signs_from) = generate_and_store(db, &settings.keys_dir, settings.jwks_max_age + RELOAD_SLACK)
        .await
        .map_err(|e| {
            Error::Internal(e.context(format!("writing a key to {}", settings.keys_dir.display())))
        })?;
    tracing::info!(event = "key_rotated", %kid, "new signing key");
    Ok((kid, signs_from))
}

/// Stops a key signing at once; refused for the only key that could sign.
pub async fn retire_key(db: &Db, kid: &str, now: i64) -> Result<(), Error> {
    let rows = list_keys(db.pool()).await?;
    if !rows.iter().any(|r| r.kid == kid && r.retired_at.is_none()) {
        return Err(Error::not_found());
    }
    if !rows.iter().any(|r| r.kid != kid && r.retired_at.is_none()) {
        return Err(Error::Problem(Box::new(
            crate::error::Problem::new(
                StatusCode::CONFLICT,
                "only_signing_key",
                "This is the only signing key",
            )
            .with_detail("rotate first, then retire the old key"),
        )));
    }
    let mut tx = db.begin_write().await?;
    store_retire_key(tx.conn(), kid, now).await?;
    tx.commit().await?;
    tracing::info!(event = "key_retired", %kid, "signing key retired");
    Ok(())
}

impl Error {
    /// A one-line message for the command line.
    pub fn to_cli_message(&self) -> String {
        match self {
            Error::Problem(p) => {
                let mut out = p.title.clone();
                if let Some(d) = &p.detail {
                    out.push_str(": ");
                    out.push_str(d);
                }
                for f in p.errors.iter().flatten() {
                    out.push_str(&format!("; {}: {}", f.field, f.message));
                }
                out
            }
            Error::Internal(e) => format!("{e:#}"),
            other => format!("{other:?}"),
        }
    }
}
