//! The account life cycle: registration and e-mail verification, password
//! reset, and what a signed-in user does with their own account. Nothing here
//! sees HTTP; mail is queued in the transaction that makes its token.

mod profile;
mod recovery;
mod registration;

pub use profile::{Profile, change_password, delete_account, logout_all, profile, update_profile};
pub use recovery::{confirm_password_reset, request_password_reset};
pub use registration::{register, resend_verification, verify_email};

use poem::http::StatusCode;

use crate::app::AppState;
use crate::domain::{Password, PasswordError};
use crate::error::{Error, FieldProblem};

/// How long a verification link lives (SPEC §6).
pub const VERIFY_TTL: i64 = 24 * 3600;
/// How long a reset link lives (SPEC §6).
pub const RESET_TTL: i64 = 3600;

/// Checks a new password against the policy, as a field problem.
fn check_new_password(state: &AppState, field: &str, text: &str) -> Result<Password, FieldProblem> {
    Password::parse(text, state.settings.password_min_length)
        .map_err(|e: PasswordError| FieldProblem::new(field, e.code(), e.to_string()))
}

/// The `email` field: required and a valid address.
fn email_field(email: Option<&str>) -> Result<crate::domain::Email, FieldProblem> {
    match email.map(crate::domain::Email::parse) {
        None => Err(FieldProblem::new("email", "required", "is required")),
        Some(Err(e)) => Err(FieldProblem::new("email", "invalid_email", e)),
        Some(Ok(email)) => Ok(email),
    }
}

/// A mailed token that is unknown, used or expired.
fn token_invalid() -> Error {
    Error::problem(
        StatusCode::BAD_REQUEST,
        "token_invalid",
        "The link is invalid, already used or expired",
    )
}

/// A wrong current password on a signed-in call.
fn wrong_password() -> Error {
    Error::forbidden("wrong_password", "The password is not right")
}

/// The base of links put in mail.
fn public_url(state: &AppState) -> &str {
    state.settings.public_url.as_deref().unwrap_or(&state.issuer)
}

/// Refuses text holding U+0000 or longer than `max` characters.
fn plain_text(field: &str, value: &str, max: usize) -> Result<(), FieldProblem> {
    if value.contains('\0') {
        return Err(FieldProblem::new(field, "invalid", "must not contain U+0000"));
    }
    if value.chars().count() > max {
        return Err(FieldProblem::new(
            field,
            "too_long",
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}
