//! The token endpoint's grants: `password`, `refresh_token`, `client_credentials`.

use secrecy::{ExposeSecret, SecretString};

use super::OIDC_SCOPES;
use crate::app::AppState;
use crate::domain::{GrantType, Scope};
use crate::error::{Error, OAuthCode};
use crate::password::Verdict;
use crate::store::client::Client;
use crate::store::login_attempt::{LoginGate, begin_login_attempt, clear_login_attempts};
use crate::store::session::{
    NewSession, consume_refresh_token, find_refresh_token, insert_refresh_token, insert_session,
    revoke_session,
};
use crate::store::user::{UserRow, find_user, find_user_by_email, update_user_password_hash};
use crate::tokens::jwt::{ACCESS_TOKEN_TYP, AccessClaims, Audience, ID_TOKEN_TYP, IdClaims, encode};
use crate::tokens::{OpaqueToken, TokenDigest, TokenKind};

/// A parsed token request, one variant per grant.
#[derive(Debug)]
pub enum TokenRequest {
    Password {
        username: String,
        password: SecretString,
        scope: Option<Scope>,
    },
    RefreshToken {
        refresh_token: SecretString,
        scope: Option<Scope>,
    },
    ClientCredentials {
        scope: Option<Scope>,
    },
}

/// What a successful grant hands out (RFC 6749 §5.1).
#[derive(Debug)]
pub struct TokenGrant {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: Scope,
    pub refresh_token: Option<OpaqueToken>,
    pub id_token: Option<String>,
}

pub async fn exchange(
    state: &AppState,
    client: &Client,
    request: TokenRequest,
    now: i64,
) -> Result<TokenGrant, Error> {
    let (grant, result) = match request {
        TokenRequest::Password {
            username,
            password,
            scope,
        } => (
            GrantType::Password,
            password_grant(state, client, &username, password, scope, now).await,
        ),
        TokenRequest::RefreshToken { refresh_token, scope } => (
            GrantType::RefreshToken,
            refresh_grant(state, client, refresh_token, scope, now).await,
        ),
        TokenRequest::ClientCredentials { scope } => (
            GrantType::ClientCredentials,
            client_credentials_grant(state, client, scope, now),
        ),
    };
    if result.is_ok() {
        state.metrics.token_issued(grant);
    }
    result
}

fn require_grant(client: &Client, grant: GrantType) -> Result<(), Error> {
    if client.has_grant(grant) {
        Ok(())
    } else {
        Err(Error::oauth_with(
            OAuthCode::UnauthorizedClient,
            format!("this client may not use the {grant} grant"),
        ))
    }
}

/// SPEC §10: clients acting for users may ask for the OIDC scopes and their
/// own; others only their own. No `scope` means the client's default.
fn resolve_scope(client: &Client, for_user: bool, requested: Option<Scope>) -> Result<Scope, Error> {
    let allowed = if for_user {
        client.scopes.union(&Scope::from_tokens(OIDC_SCOPES))
    } else {
        client.scopes.clone()
    };
    match requested {
        Some(scope) if scope.is_subset(&allowed) => Ok(scope),
        Some(_) => Err(Error::oauth_with(
            OAuthCode::InvalidScope,
            "the requested scope is not allowed for this client",
        )),
        None if !client.scopes.is_empty() => Ok(client.scopes.clone()),
        None if for_user => Ok(Scope::from_tokens(["profile", "email"])),
        None => Ok(Scope::default()),
    }
}

#[tracing::instrument(skip_all, fields(client_id = %client.id))]
async fn password_grant(
    state: &AppState,
    client: &Client,
    username: &str,
    password: SecretString,
    scope: Option<Scope>,
    now: i64,
) -> Result<TokenGrant, Error> {
    require_grant(client, GrantType::Password)?;
    let scope = resolve_scope(client, true, scope)?;
    let lookup = crate::domain::normalise_username(username);
    // SPEC §10: back-off per normalised username, account or not; the
    // attempt counts as a failure until it succeeds.
    let attempt = TokenDigest::of(&lookup);
    let mut tx = state.db.begin_write().await?;
    let gate = begin_login_attempt(tx.conn(), &attempt, now, state.settings.login_backoff_after).await?;
    tx.commit().await?;
    let user = if lookup.len() <= 254 {
        find_user_by_email(state.db.pool(), &lookup).await?
    } else {
        None
    };
    // Hashes are of the NFKC form (SPEC §6), whatever form was typed.
    let password = crate::domain::normalise_password(password.expose_secret());
    // Unknown users verify a dummy hash and backed-off ones verify all the
    // same: every refusal costs one argon2 run.
    let verdict = state
        .hasher
        .verify(password.clone(), user.as_ref().map(|u| u.password_hash.clone()))
        .await?;
    let user = match user {
        Some(user) if gate.is_open() && verdict != Verdict::Wrong && user.is_active() => user,
        _ => {
            tracing::warn!(
                event = "login_failed",
                backed_off = !gate.is_open(),
                "password grant refused"
            );
            state.metrics.login_failed();
            if let LoginGate::Open { failures, backoff } = gate
                && backoff > 0
            {
                tracing::warn!(
                    event = "account_locked",
                    failures,
                    backoff_seconds = backoff,
                    "login back-off started"
                );
            }
            // The same answer as a wrong password: no hint that the account exists.
            return Err(Error::invalid_grant());
        }
    };
    if state.settings.require_verified_email && user.email_verified_at.is_none() {
        // The password was right: the count starts again.
        let mut tx = state.db.begin_write().await?;
        clear_login_attempts(tx.conn(), &attempt).await?;
        tx.commit().await?;
        return Err(Error::oauth_with(OAuthCode::InvalidGrant, "email not verified"));
    }
    if verdict == Verdict::RightNeedsRehash {
        // Best effort: a failure here must not fail the login.
        match state.hasher.hash(password).await {
            Ok(hash) => match state.db.begin_write().await {
                Ok(mut tx) => {
                    if update_user_password_hash(tx.conn(), &user.id, &hash)
                        .await
                        .is_ok()
                    {
                        let _ = tx.commit().await;
                    }
                }
                Err(e) => tracing::warn!("password rehash skipped: {e:#}"),
            },
            Err(e) => tracing::warn!("password rehash failed: {e:#}"),
        }
    }

    let sid = uuid::Uuid::new_v4().to_string();
    let refresh = client
        .has_grant(GrantType::RefreshToken)
        .then(|| OpaqueToken::generate(TokenKind::RefreshToken));
    let session_expires = now + state.settings.session_max_age;
    let scope_text = scope.to_string();
    let mut tx = state.db.begin_write().await?;
    clear_login_attempts(tx.conn(), &attempt).await?;
    let started = insert_session(
        tx.conn(),
        &NewSession {
            id: &sid,
            user_id: &user.id,
            client_id: &client.id,
            scope: &scope_text,
            auth_time: now,
            expires_at: session_expires,
        },
    )
    .await?;
    if !started {
        // Deleted while the password was being checked.
        return Err(Error::invalid_grant());
    }
    if let Some(token) = &refresh {
        let expires = (now + state.settings.refresh_token_ttl).min(session_expires);
        insert_refresh_token(tx.conn(), &token.digest(), &sid, now, expires).await?;
    }
    tx.commit().await?;
    tracing::info!(event = "login_succeeded", user_id = %user.id, "password grant");
    issue_for_user(state, client, &user, &sid, scope, now, now, refresh)
}

#[tracing::instrument(skip_all, fields(client_id = %client.id))]
async fn refresh_grant(
    state: &AppState,
    client: &Client,
    refresh_token: SecretString,
    requested: Option<Scope>,
    now: i64,
) -> Result<TokenGrant, Error> {
    require_grant(client, GrantType::RefreshToken)?;
    let presented = refresh_token.expose_secret();
    if !presented.starts_with(TokenKind::RefreshToken.prefix()) || presented.len() > 256 {
        return Err(Error::invalid_grant());
    }
    let digest = TokenDigest::of(presented);
    let mut tx = state.db.begin_write().await?;
    let Some(row) = find_refresh_token(tx.conn(), &digest).await? else {
        return Err(Error::invalid_grant());
    };
    // Bound to its client (RFC 6749 §6); another client's attempt consumes nothing.
    if row.client_id != client.id {
        return Err(Error::invalid_grant());
    }
    if row.used_at.is_some() {
        // RFC 9700 §4.14.2: reuse ends the whole chain, committed before we answer.
        revoke_session(tx.conn(), &row.session_id, now).await?;
        tx.commit().await?;
        tracing::warn!(event = "refresh_reuse_detected", sid = %row.session_id, "used refresh token presented again");
        state.metrics.refresh_reuse_detected();
        return Err(Error::invalid_grant());
    }
    if !row.is_live(now) {
        return Err(Error::invalid_grant());
    }
    let user = match find_user(tx.conn(), &row.user_id).await? {
        Some(user) if user.is_active() => user,
        _ => return Err(Error::invalid_grant()),
    };
    let granted = Scope::parse(&row.scope).map_err(|e| anyhow::anyhow!("stored scope: {e}"))?;
    // RFC 6749 §6: may narrow, never widen; the new refresh token keeps the original scope.
    let scope = match requested {
        None => granted,
        Some(s) if s.is_subset(&granted) => s,
        Some(_) => {
            return Err(Error::oauth_with(
                OAuthCode::InvalidScope,
                "the requested scope exceeds the scope originally granted",
            ));
        }
    };
    if !consume_refresh_token(tx.conn(), &digest, now).await? {
        // Another request consumed it first: that is reuse too.
        revoke_session(tx.conn(), &row.session_id, now).await?;
        tx.commit().await?;
        tracing::warn!(event = "refresh_reuse_detected", sid = %row.session_id, "concurrent refresh of one token");
        state.metrics.refresh_reuse_detected();
        return Err(Error::invalid_grant());
    }
    let next = OpaqueToken::generate(TokenKind::RefreshToken);
    let expires = (now + state.settings.refresh_token_ttl).min(row.session_expires_at);
    insert_refresh_token(tx.conn(), &next.digest(), &row.session_id, now, expires).await?;
    tx.commit().await?;
    issue_for_user(
        state,
        client,
        &user,
        &row.session_id,
        scope,
        row.auth_time,
        now,
        Some(next),
    )
}

#[tracing::instrument(skip_all, fields(client_id = %client.id))]
fn client_credentials_grant(
    state: &AppState,
    client: &Client,
    scope: Option<Scope>,
    now: i64,
) -> Result<TokenGrant, Error> {
    if client.is_public() {
        // RFC 6749 §4.4: "MUST only be used by confidential clients".
        return Err(Error::oauth_with(
            OAuthCode::UnauthorizedClient,
            "public clients may not use the client_credentials grant",
        ));
    }
    require_grant(client, GrantType::ClientCredentials)?;
    let scope = resolve_scope(client, false, scope)?;
    let claims = AccessClaims {
        iss: state.issuer.clone(),
        sub: client.id.clone(),
        aud: Audience::from_list(&state.audiences),
        client_id: client.id.clone(),
        scope: scope.to_string(),
        exp: now + state.settings.access_token_ttl,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        auth_time: None,
        sid: None,
        roles: None,
    };
    let keys = state.keys.current();
    let signer = keys
        .signer(now)
        .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
    Ok(TokenGrant {
        access_token: encode(signer, ACCESS_TOKEN_TYP, &claims)?,
        expires_in: state.settings.access_token_ttl,
        scope,
        refresh_token: None,
        id_token: None,
    })
}

/// Signs the access token (and the id_token when `openid` was granted).
#[allow(clippy::too_many_arguments)]
fn issue_for_user(
    state: &AppState,
    client: &Client,
    user: &UserRow,
    sid: &str,
    scope: Scope,
    auth_time: i64,
    now: i64,
    refresh_token: Option<OpaqueToken>,
) -> Result<TokenGrant, Error> {
    let ttl = state.settings.access_token_ttl;
    let keys = state.keys.current();
    let signer = keys
        .signer(now)
        .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
    let claims = AccessClaims {
        iss: state.issuer.clone(),
        sub: user.id.clone(),
        aud: Audience::from_list(&state.audiences),
        client_id: client.id.clone(),
        scope: scope.to_string(),
        exp: now + ttl,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        auth_time: Some(auth_time),
        sid: Some(sid.to_owned()),
        roles: Some(user.roles()),
    };
    let access_token = encode(signer, ACCESS_TOKEN_TYP, &claims)?;
    let id_token = if scope.contains("openid") {
        let email = scope.contains("email");
        let id = IdClaims {
            iss: state.issuer.clone(),
            sub: user.id.clone(),
            aud: client.id.clone(),
            exp: now + ttl,
            iat: now,
            auth_time,
            sid: Some(sid.to_owned()),
            email: email.then(|| user.email.clone()),
            email_verified: email.then_some(user.email_verified_at.is_some()),
            name: if scope.contains("profile") {
                user.name.clone()
            } else {
                None
            },
        };
        Some(encode(signer, ID_TOKEN_TYP, &id)?)
    } else {
        None
    };
    Ok(TokenGrant {
        access_token,
        expires_in: ttl,
        scope,
        refresh_token,
        id_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(scopes: &str, grants: &[GrantType]) -> Client {
        Client {
            id: "c".into(),
            name: "c".into(),
            secret_digest: None,
            grants: grants.to_vec(),
            scopes: Scope::parse(scopes).unwrap(),
            created_at: 0,
        }
    }

    #[test]
    fn scope_rules_follow_spec_section_10() {
        let user_app = client("", &[GrantType::Password]);
        let api = client("read write", &[GrantType::ClientCredentials]);
        let s = |t: &str| Some(Scope::parse(t).unwrap());
        assert_eq!(
            resolve_scope(&user_app, true, None).unwrap().to_string(),
            "email profile"
        );
        assert_eq!(
            resolve_scope(&user_app, true, s("openid")).unwrap().to_string(),
            "openid"
        );
        assert!(resolve_scope(&user_app, true, s("read")).is_err());
        assert_eq!(
            resolve_scope(&api, false, None).unwrap().to_string(),
            "read write"
        );
        assert_eq!(resolve_scope(&api, false, s("read")).unwrap().to_string(), "read");
        assert!(resolve_scope(&api, false, s("openid")).is_err());
        assert!(resolve_scope(&api, false, s("admin")).is_err());
    }
}
