//! What a signed-in user does with their own account.

use crate::app::AppState;
use crate::domain::normalise_password;
use crate::error::{Error, FieldProblem};
use crate::password::Verdict;
use crate::store::account_token::{Purpose, expire_account_tokens};
use crate::store::session::{revoke_user_sessions, revoke_user_sessions_except};
use crate::store::user::{UserRow, delete_user, find_user, update_user_name, update_user_password_hash};
use crate::tokens::jwt::AccessClaims;

use super::{check_new_password, plain_text, wrong_password};

/// The profile of `GET /accounts/me`.
#[derive(Debug, Clone)]
pub struct Profile {
    pub id: String,
    pub email: String,
    pub email_verified: bool,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub created_at: i64,
}

impl From<&UserRow> for Profile {
    fn from(user: &UserRow) -> Profile {
        Profile {
            id: user.id.clone(),
            email: user.email.clone(),
            email_verified: user.email_verified_at.is_some(),
            name: user.name.clone(),
            roles: user.roles(),
            created_at: user.created_at,
        }
    }
}

pub fn profile(user: &UserRow) -> Profile {
    Profile::from(user)
}

/// `PATCH /accounts/me`: `name` set (or cleared with an empty string);
/// absent leaves it as it is.
#[tracing::instrument(skip_all)]
pub async fn update_profile(
    state: &AppState,
    user: &UserRow,
    name: Option<String>,
) -> Result<Profile, Error> {
    let Some(name) = name else {
        return Ok(Profile::from(user));
    };
    let name = name.trim().to_owned();
    plain_text("name", &name, 200).map_err(|p| Error::validation(vec![p]))?;
    let name = (!name.is_empty()).then_some(name);
    let mut tx = state.db.begin_write().await?;
    update_user_name(tx.conn(), &user.id, name.as_deref()).await?;
    let updated = find_user(tx.conn(), &user.id)
        .await?
        .ok_or_else(Error::not_found)?;
    tx.commit().await?;
    Ok(Profile::from(&updated))
}

/// Checks the user's current password (one argon2 run either way).
async fn check_current(
    state: &AppState,
    user: &UserRow,
    field: &str,
    given: Option<String>,
) -> Result<(), Error> {
    let Some(given) = given else {
        return Err(Error::validation(vec![FieldProblem::new(
            field,
            "required",
            "is required",
        )]));
    };
    let verdict = state
        .hasher
        .verify(normalise_password(&given), Some(user.password_hash.clone()))
        .await?;
    if verdict == Verdict::Wrong {
        tracing::warn!(event = "password_check_failed", user_id = %user.id, "wrong current password");
        return Err(wrong_password());
    }
    Ok(())
}

/// Changes the password; every other session of the user ends, the
/// caller's own (by `sid`) survives.
#[tracing::instrument(skip_all)]
pub async fn change_password(
    state: &AppState,
    claims: &AccessClaims,
    user: &UserRow,
    current_password: Option<String>,
    new_password: Option<String>,
    now: i64,
) -> Result<(), Error> {
    let mut problems = Vec::new();
    if current_password.is_none() {
        problems.push(FieldProblem::new("current_password", "required", "is required"));
    }
    let new = match new_password.as_deref() {
        None => {
            problems.push(FieldProblem::new("new_password", "required", "is required"));
            None
        }
        Some(text) => check_new_password(state, "new_password", text)
            .map_err(|p| problems.push(p))
            .ok(),
    };
    let (Some(new), true) = (new, problems.is_empty()) else {
        return Err(Error::validation(problems));
    };
    check_current(state, user, "current_password", current_password).await?;
    let hash = state.hasher.hash(new.into_secret()).await?;
    let mut tx = state.db.begin_write().await?;
    update_user_password_hash(tx.conn(), &user.id, &hash).await?;
    // An older reset link must not undo the change.
    expire_account_tokens(tx.conn(), &user.id, Purpose::ResetPassword, now).await?;
    let ended = match &claims.sid {
        Some(sid) => revoke_user_sessions_except(tx.conn(), &user.id, sid, now).await?,
        None => revoke_user_sessions(tx.conn(), &user.id, now).await?,
    };
    tx.commit().await?;
    tracing::info!(event = "password_changed", user_id = %user.id, sessions_ended = ended, "password changed");
    Ok(())
}

/// Ends every refresh chain of the user, and with them their access tokens.
#[tracing::instrument(skip_all)]
pub async fn logout_all(state: &AppState, user: &UserRow, now: i64) -> Result<(), Error> {
    let mut tx = state.db.begin_write().await?;
    let ended = revoke_user_sessions(tx.conn(), &user.id, now).await?;
    tx.commit().await?;
    tracing::info!(event = "logout_all", user_id = %user.id, sessions_ended = ended, "every session ended");
    Ok(())
}

/// Deletes the account after checking its password; its sessions, refresh
/// tokens, mailed tokens and queued mail go with it.
#[tracing::instrument(skip_all)]
pub async fn delete_account(state: &AppState, user: &UserRow, password: Option<String>) -> Result<(), Error> {
    check_current(state, user, "password", password).await?;
    let mut tx = state.db.begin_write().await?;
    delete_user(tx.conn(), &user.id).await?;
    tx.commit().await?;
    tracing::info!(event = "account_deleted", user_id = %user.id, "account deleted");
    Ok(())
}
