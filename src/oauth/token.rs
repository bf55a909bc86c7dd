//! The token endpoint's grants: `password`, `refresh_token`, `client_credentials`.

use secrecy::{ExposeSecret, SecretString};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use super::OIDC_SCOPES;
use super::login::{LoginRefusal, LoginSuccess, verify_login};
use crate::app::AppState;
use crate::domain::{GrantType, Scope};
use crate::error::{Error, OAuthCode};
use crate::store::browser::{CodeRow, consume_code, find_code, find_live_browser_session, record_code_issue};
use crate::store::client::Client;
use crate::store::revocation::insert_revoked_access_token;
use crate::store::session::{
    FirstRefresh, LiveRotation, NewSession, RefreshGrantRow, find_refresh_grant, find_refresh_token,
    insert_refresh_token, insert_session, revoke_session, rotate_live_refresh_token, rotate_refresh_token,
    start_password_login,
};
use crate::store::user::{UserRow, find_user};
use crate::tokens::jwt::{ACCESS_TOKEN_TYP, AccessClaims, Audience, ID_TOKEN_TYP, IdClaims, encode};
use crate::tokens::{OpaqueToken, TokenDigest, TokenKind};

/// The one `error_description` a login may carry (SPEC §10): the password
/// was right, the address is not verified. Callers match on it.
pub const EMAIL_NOT_VERIFIED: &str = "email not verified";

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
    AuthorizationCode {
        code: SecretString,
        redirect_uri: Option<String>,
        code_verifier: Option<SecretString>,
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
    /// The access token's `jti`, for revoking it later.
    pub access_jti: String,
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
        TokenRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => (
            GrantType::AuthorizationCode,
            authorization_code_grant(state, client, code, redirect_uri, code_verifier, now).await,
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
pub(super) fn resolve_scope(
    client: &Client,
    for_user: bool,
    requested: Option<Scope>,
) -> Result<Scope, Error> {
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
    password_login(state, client, username, password, scope, now).await
}

/// `POST /session/login` (SPEC §11): a password login for a first-party web
/// app whose tokens go into cookies. The client needs `--first-party` and
/// the refresh_token grant, and no secret: the browser cannot keep one.
pub async fn cookie_session_login(
    state: &AppState,
    client: &Client,
    username: &str,
    password: SecretString,
    now: i64,
) -> Result<TokenGrant, Error> {
    if !client.first_party || !client.has_grant(GrantType::RefreshToken) {
        return Err(Error::oauth_with(
            OAuthCode::UnauthorizedClient,
            "cookie sessions need a first-party client with the refresh_token grant",
        ));
    }
    password_login(state, client, username, password, None, now).await
}

/// The password grant's work once the client may use it: check the
/// password, start a login and its refresh chain, sign the tokens.
async fn password_login(
    state: &AppState,
    client: &Client,
    username: &str,
    password: SecretString,
    scope: Option<Scope>,
    now: i64,
) -> Result<TokenGrant, Error> {
    let scope = resolve_scope(client, true, scope)?;
    let LoginSuccess { user, attempt } = match verify_login(state, username, &password, now).await {
        Ok(success) => success,
        // The same answer as a wrong password: no hint that the account exists.
        Err(LoginRefusal::Invalid) => return Err(Error::invalid_grant()),
        Err(LoginRefusal::Unverified) => {
            return Err(Error::oauth_with(OAuthCode::InvalidGrant, EMAIL_NOT_VERIFIED));
        }
        Err(LoginRefusal::Internal(e)) => return Err(e),
    };
    let sid = uuid::Uuid::new_v4().to_string();
    let refresh = client
        .has_grant(GrantType::RefreshToken)
        .then(|| OpaqueToken::generate(TokenKind::RefreshToken));
    let session_expires = now + state.settings.session_max_age;
    let scope_text = scope.to_string();
    let session = NewSession {
        id: &sid,
        user_id: &user.id,
        client_id: &client.id,
        scope: &scope_text,
        auth_time: now,
        expires_at: session_expires,
        browser_session_id: None,
    };
    let first = refresh.as_ref().map(|token| FirstRefresh {
        digest: token.digest(),
        expires_at: (now + state.settings.refresh_token_ttl).min(session_expires),
    });
    if !start_password_login(&state.db, attempt.digest(), &session, first).await? {
        // Deleted while the password was being checked.
        return Err(Error::invalid_grant());
    }
    attempt.cleared();
    tracing::info!(event = "login_succeeded", user_id = %user.id, "password login");
    issue_for_user(
        state,
        client,
        &user,
        &Issue {
            sid: &sid,
            auth_time: now,
            nonce: None,
        },
        scope,
        now,
        refresh,
    )
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
    let next = OpaqueToken::generate(TokenKind::RefreshToken);
    // No scope to narrow: rotate and read in one step (one statement on
    // PostgreSQL, one transaction of the writer task on SQLite). A token
    // it did not rotate is read below to learn why (reuse, another client's,
    // ended), and nothing is rotated twice.
    if requested.is_none() {
        let rotation = LiveRotation {
            used: digest.clone(),
            next: next.digest(),
            client_id: client.id.clone(),
            now,
            ttl: state.settings.refresh_token_ttl,
        };
        if let Some(found) = rotate_live_refresh_token(&state.db, rotation).await? {
            let scope = Scope::parse(&found.token.scope).map_err(|e| anyhow::anyhow!("stored scope: {e}"))?;
            return issue_refreshed(state, client, &found, scope, now, next);
        }
    }
    // Read outside the write lock; the rotation below decides atomically.
    let found = find_refresh_grant(&state.db, &digest).await?;
    let Some(found) = found else {
        return Err(Error::invalid_grant());
    };
    let (row, user) = (&found.token, &found.user);
    // Bound to its client (RFC 6749 §6); another client's attempt consumes nothing.
    if row.client_id != client.id {
        return Err(Error::invalid_grant());
    }
    if row.used_at.is_some() {
        // RFC 9700 §4.14.2: reuse ends the whole chain, committed before we answer.
        return Err(reuse_detected(state, &row.session_id, now, "used refresh token presented again").await);
    }
    if !row.is_live(now) || !user.is_active() {
        return Err(Error::invalid_grant());
    }
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
    let expires = (now + state.settings.refresh_token_ttl).min(row.session_expires_at);
    // Queued now (SQLite); the tokens are signed while the writer task
    // writes it, and handed out only once it is written.
    let rotated = rotate_refresh_token(&state.db, &digest, &next.digest(), now, expires);
    let grant = issue_refreshed(state, client, &found, scope, now, next);
    if !rotated.await? {
        // Another request rotated it first: that is reuse too. Otherwise the
        // chain ended since it was read (logout, a disabled user): no alarm.
        let used = find_refresh_token(state.db.pool(), &digest)
            .await?
            .is_some_and(|r| r.used_at.is_some());
        if used {
            return Err(reuse_detected(state, &row.session_id, now, "concurrent refresh of one token").await);
        }
        return Err(Error::invalid_grant());
    }
    grant
}

/// The answer to a refresh that rotated: tokens for the same login.
fn issue_refreshed(
    state: &AppState,
    client: &Client,
    found: &RefreshGrantRow,
    scope: Scope,
    now: i64,
    next: OpaqueToken,
) -> Result<TokenGrant, Error> {
    issue_for_user(
        state,
        client,
        &found.user,
        &Issue {
            sid: found.token.sid(),
            auth_time: found.token.auth_time,
            nonce: None,
        },
        scope,
        now,
        Some(next),
    )
}

/// Ends the chain a reused refresh token belongs to, then answers
/// `invalid_grant`; a failure to end it is the answer instead.
async fn reuse_detected(state: &AppState, session_id: &str, now: i64, what: &'static str) -> Error {
    let ended = async {
        let mut tx = state.db.begin_write().await?;
        revoke_session(tx.conn(), session_id, now).await?;
        tx.commit().await
    };
    if let Err(e) = ended.await {
        return e.into();
    }
    tracing::warn!(event = "refresh_reuse_detected", sid = %session_id, "{what}");
    state.metrics.refresh_reuse_detected();
    Error::invalid_grant()
}

/// RFC 6749 §4.1.3 with RFC 7636 §4.6: the code is used up by the first
/// attempt, whatever its outcome; a second attempt revokes what the first
/// issued (RFC 6749 §4.1.2, RFC 9700 §4.5).
#[tracing::instrument(skip_all, fields(client_id = %client.id))]
async fn authorization_code_grant(
    state: &AppState,
    client: &Client,
    code: SecretString,
    redirect_uri: Option<String>,
    code_verifier: Option<SecretString>,
    now: i64,
) -> Result<TokenGrant, Error> {
    require_grant(client, GrantType::AuthorizationCode)?;
    let presented = code.expose_secret();
    if !presented.starts_with(TokenKind::AuthorizationCode.prefix()) || presented.len() > 256 {
        return Err(Error::invalid_grant());
    }
    let digest = TokenDigest::of(presented);
    let mut tx = state.db.begin_write().await?;
    let Some(row) = find_code(tx.conn(), &digest).await? else {
        return Err(Error::invalid_grant());
    };
    if !consume_code(tx.conn(), &digest, now).await? {
        // Replayed: whoever holds it now, what it issued must not stand.
        if let Some(sid) = &row.login_session_id {
            revoke_session(tx.conn(), sid, now).await?;
        }
        if let (Some(jti), Some(exp)) = (&row.access_jti, row.access_expires_at) {
            insert_revoked_access_token(tx.conn(), jti, exp).await?;
        }
        tx.commit().await?;
        tracing::warn!(event = "code_replay_detected", client_id = %row.client_id, "authorization code used again");
        return Err(Error::oauth_with(
            OAuthCode::InvalidGrant,
            "the code was already used",
        ));
    }
    // Used up from here on: a refusal below commits that too.
    let refuse = |why: &'static str| {
        tracing::warn!(event = "code_refused", reason = why, "authorization code refused");
        Error::oauth_with(OAuthCode::InvalidGrant, why)
    };
    if let Err(why) = check_code(&row, client, redirect_uri.as_deref(), code_verifier.as_ref(), now) {
        tx.commit().await?;
        return Err(refuse(why));
    }
    let browser = find_live_browser_session(tx.conn(), &row.browser_session_id, now).await?;
    let user = match &browser {
        Some(b) => find_user(tx.conn(), &b.user_id).await?.filter(UserRow::is_active),
        None => None,
    };
    let (Some(browser), Some(user)) = (browser, user) else {
        tx.commit().await?;
        return Err(refuse("the sign-in has ended"));
    };
    let scope = Scope::parse(&row.scope).map_err(|e| anyhow::anyhow!("stored scope: {e}"))?;
    let chain = uuid::Uuid::new_v4().to_string();
    let refresh = client
        .has_grant(GrantType::RefreshToken)
        .then(|| OpaqueToken::generate(TokenKind::RefreshToken));
    let grant = issue_for_user(
        state,
        client,
        &user,
        &Issue {
            sid: &browser.id,
            auth_time: browser.auth_time,
            nonce: row.nonce.as_deref(),
        },
        scope,
        now,
        refresh,
    )?;
    let started = insert_session(
        tx.conn(),
        &NewSession {
            id: &chain,
            user_id: &user.id,
            client_id: &client.id,
            scope: &row.scope,
            auth_time: browser.auth_time,
            expires_at: browser.expires_at,
            browser_session_id: Some(&browser.id),
        },
    )
    .await?;
    if !started {
        return Err(Error::invalid_grant());
    }
    if let Some(token) = &grant.refresh_token {
        let expires = (now + state.settings.refresh_token_ttl).min(browser.expires_at);
        insert_refresh_token(tx.conn(), &token.digest(), &chain, now, expires).await?;
    }
    record_code_issue(
        tx.conn(),
        &digest,
        &chain,
        &grant.access_jti,
        now + grant.expires_in,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(event = "code_exchanged", user_id = %user.id, "authorization code exchanged");
    Ok(grant)
}

/// The checks on a code that its lookup alone does not make.
fn check_code(
    row: &CodeRow,
    client: &Client,
    redirect_uri: Option<&str>,
    code_verifier: Option<&SecretString>,
    now: i64,
) -> Result<(), &'static str> {
    if row.client_id != client.id {
        return Err("the code was issued to another client");
    }
    if now >= row.expires_at {
        return Err("the code has expired");
    }
    // RFC 6749 §4.1.3: the same redirect_uri when the request named one.
    match redirect_uri {
        Some(given) if given != row.redirect_uri => return Err("redirect_uri does not match"),
        None if row.redirect_uri_given != 0 => return Err("redirect_uri is missing"),
        _ => {}
    }
    match (&row.code_challenge, code_verifier) {
        (Some(challenge), Some(verifier)) if pkce_matches(challenge, verifier.expose_secret()) => Ok(()),
        (Some(_), Some(_)) => Err("code_verifier does not match the code_challenge"),
        (Some(_), None) => Err("code_verifier is missing"),
        // RFC 9700 §2.1.1: a verifier without a challenge is a downgrade attempt.
        (None, Some(_)) => Err("no code_challenge was sent for this code"),
        (None, None) => Ok(()),
    }
}

/// RFC 7636 §4.6: `BASE64URL(SHA256(verifier)) == challenge`, with the
/// verifier 43–128 unreserved characters (§4.1).
fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let computed = URL_SAFE_NO_PAD.encode(digest.as_ref());
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
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
        jti: crate::tokens::jwt::new_jti()?,
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
        access_jti: claims.jti,
    })
}

/// The login a user's tokens are issued under.
struct Issue<'a> {
    sid: &'a str,
    auth_time: i64,
    nonce: Option<&'a str>,
}

/// Signs the access token (and the id_token when `openid` was granted).
fn issue_for_user(
    state: &AppState,
    client: &Client,
    user: &UserRow,
    issue: &Issue<'_>,
    scope: Scope,
    now: i64,
    refresh_token: Option<OpaqueToken>,
) -> Result<TokenGrant, Error> {
    let Issue {
        sid,
        auth_time,
        nonce,
    } = *issue;
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
        jti: crate::tokens::jwt::new_jti()?,
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
            nonce: nonce.map(str::to_owned),
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
        access_jti: claims.jti,
    })
}

/// `POST /session/refresh` (SPEC §11): the refresh grant for a token the
/// browser held in a cookie. The token names its client, so the browser
/// sends none; the client must still be first-party with the refresh_token
/// grant. Returns the grant and the seconds the new refresh token lives
/// (its idle lifetime, cut short by the login's absolute deadline).
pub async fn cookie_session_refresh(
    state: &AppState,
    refresh_token: SecretString,
    now: i64,
) -> Result<(TokenGrant, i64), Error> {
    let presented = refresh_token.expose_secret();
    if !presented.starts_with(TokenKind::RefreshToken.prefix()) || presented.len() > 256 {
        return Err(Error::invalid_grant());
    }
    let digest = TokenDigest::of(presented);
    let Some(row) = find_refresh_token(state.db.pool(), &digest).await? else {
        return Err(Error::invalid_grant());
    };
    let Some(client) = crate::store::client::find_client(state.db.pool(), &row.client_id).await? else {
        return Err(Error::invalid_grant());
    };
    if !client.first_party {
        return Err(Error::oauth_with(
            OAuthCode::UnauthorizedClient,
            "cookie sessions need a first-party client",
        ));
    }
    // The refresh grant itself: single use, reuse ends the chain.
    let grant = exchange(
        state,
        &client,
        TokenRequest::RefreshToken {
            refresh_token,
            scope: None,
        },
        now,
    )
    .await?;
    let lives = (now + state.settings.refresh_token_ttl).min(row.session_expires_at) - now;
    Ok((grant, lives))
}

/// `POST /session/logout` (SPEC §11): ends the login the refresh cookie
/// belongs to (whatever its state: any token of a chain names the chain) and
/// revokes the access cookie's token by `jti`. Unknown or invalid tokens are
/// ignored, as in RFC 7009 §2.2.
pub async fn end_cookie_session(
    state: &AppState,
    refresh_token: Option<&str>,
    access_token: Option<&str>,
    now: i64,
) -> Result<(), Error> {
    let chain = match refresh_token {
        Some(t) if t.starts_with(TokenKind::RefreshToken.prefix()) && t.len() <= 256 => {
            find_refresh_token(state.db.pool(), &TokenDigest::of(t)).await?
        }
        _ => None,
    };
    let access = access_token.and_then(|t| {
        crate::tokens::jwt::verify_access_token(t, &state.keys.current(), &state.issuer, &state.audiences)
            .ok()
    });
    if chain.is_none() && access.is_none() {
        return Ok(());
    }
    let mut tx = state.db.begin_write().await?;
    if let Some(row) = &chain {
        revoke_session(tx.conn(), &row.session_id, now).await?;
    }
    if let Some(claims) = &access {
        insert_revoked_access_token(tx.conn(), &claims.jti, claims.exp).await?;
    }
    tx.commit().await?;
    if let Some(row) = &chain {
        tracing::info!(event = "cookie_session_ended", sid = %row.session_id, "cookie session ended");
    }
    Ok(())
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
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            first_party: false,
        }
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(challenge, verifier));
        assert!(!pkce_matches(
            challenge,
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK"
        ));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches(verifier, verifier));
        assert!(!pkce_matches(challenge, "short"));
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
