//! `/accounts*`: registration, verification, password reset and the
//! signed-in user's own account (JSON, RFC 9457 errors).
//!
//! Body fields are optional in the schema so that a missing one is reported
//! with the others in one `422`, not as a parse failure.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::oauth2::BearerAuth;
use super::{ApiTag, signed_in_user};
use crate::accounts::{self, Profile};
use crate::app::AppState;
use crate::error::ProblemResponse;

pub struct AccountsApi;

#[derive(Debug, Object)]
pub struct RegisterBody {
    /// Required. Unique, compared case-insensitively, stored as given.
    pub email: Option<String>,
    /// Required. 8–128 characters (the minimum is configurable); common
    /// passwords are refused.
    #[oai(write_only)]
    pub password: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Object)]
pub struct EmailBody {
    /// Required.
    pub email: Option<String>,
}

#[derive(Debug, Object)]
pub struct VerifyEmailBody {
    /// Required: the token from the verification link.
    pub token: Option<String>,
}

#[derive(Debug, Object)]
pub struct ResetConfirmBody {
    /// Required: the token from the reset link.
    pub token: Option<String>,
    /// Required.
    #[oai(write_only)]
    pub new_password: Option<String>,
}

#[derive(Debug, Object)]
pub struct ProfilePatch {
    /// A new display name; an empty string clears it; absent leaves it.
    pub name: Option<String>,
}

#[derive(Debug, Object)]
pub struct ChangePasswordBody {
    /// Required.
    #[oai(write_only)]
    pub current_password: Option<String>,
    /// Required.
    #[oai(write_only)]
    pub new_password: Option<String>,
}

#[derive(Debug, Object)]
pub struct DeleteAccountBody {
    /// Required: the account's password.
    #[oai(write_only)]
    pub password: Option<String>,
}

/// The same answer whether or not anything was sent (no account enumeration).
#[derive(Debug, Object)]
#[oai(example)]
pub struct AcceptedBody {
    /// Always `accepted`.
    pub status: String,
}

impl poem_openapi::types::Example for AcceptedBody {
    fn example() -> Self {
        AcceptedBody {
            status: "accepted".into(),
        }
    }
}

/// A user's profile.
#[derive(Debug, Object)]
#[oai(example)]
pub struct ProfileBody {
    pub id: String,
    pub email: String,
    pub email_verified: bool,
    /// `null` until the user sets one.
    #[oai(nullable)]
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl poem_openapi::types::Example for ProfileBody {
    fn example() -> Self {
        ProfileBody {
            id: "0b8f1e9e-4a57-4a51-9c55-6f7b0f7f9a11".into(),
            email: "Ada@example.com".into(),
            email_verified: true,
            name: Some("Ada".into()),
            roles: vec!["admin".into()],
            created_at: "2026-11-25T13:04:21Z".into(),
        }
    }
}

impl From<Profile> for ProfileBody {
    fn from(p: Profile) -> ProfileBody {
        ProfileBody {
            id: p.id,
            email: p.email,
            email_verified: p.email_verified,
            name: p.name,
            roles: p.roles,
            created_at: crate::rfc3339(p.created_at),
        }
    }
}

#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Accepted; a message is mailed when there is something to mail.
    #[oai(status = 202)]
    Accepted(Json<AcceptedBody>),
}

#[derive(ApiResponse)]
pub enum DoneResponse {
    /// Done.
    #[oai(status = 204)]
    Done,
}

#[derive(ApiResponse)]
pub enum ProfileResponse {
    /// The profile.
    #[oai(status = 200)]
    Ok(Json<ProfileBody>),
}

fn accepted() -> AcceptedResponse {
    AcceptedResponse::Accepted(Json(AcceptedBody {
        status: "accepted".into(),
    }))
}

type Answer<T> = Result<T, ProblemResponse>;

#[OpenApi]
impl AccountsApi {
    /// Register an account. The answer is the same whether or not the
    /// address is taken: a verification link is mailed, or the owner of the
    /// address gets a "you already have an account" notice.
    #[oai(
        path = "/accounts",
        method = "post",
        operation_id = "register",
        tag = "ApiTag::Accounts"
    )]
    async fn register(
        &self,
        Data(state): Data<&AppState>,
        body: Json<RegisterBody>,
    ) -> Answer<AcceptedResponse> {
        let Json(body) = body;
        accounts::register(state, body.email, body.password, body.name, crate::now()).await?;
        Ok(accepted())
    }

    /// Verify an e-mail address with the token from the link (single use, 24 h).
    #[oai(
        path = "/accounts/verify-email",
        method = "post",
        operation_id = "verify_email",
        tag = "ApiTag::Accounts"
    )]
    async fn verify_email(
        &self,
        Data(state): Data<&AppState>,
        body: Json<VerifyEmailBody>,
    ) -> Answer<DoneResponse> {
        let Some(token) = body.0.token else {
            return Err(required("token"));
        };
        accounts::verify_email(state, &token, crate::now()).await?;
        Ok(DoneResponse::Done)
    }

    /// Mail a new verification link, if the address has an unverified account.
    #[oai(
        path = "/accounts/verify-email/resend",
        method = "post",
        operation_id = "resend_verification",
        tag = "ApiTag::Accounts"
    )]
    async fn resend(&self, Data(state): Data<&AppState>, body: Json<EmailBody>) -> Answer<AcceptedResponse> {
        accounts::resend_verification(state, body.0.email, crate::now()).await?;
        Ok(accepted())
    }

    /// Mail a password-reset link, if the address has an account.
    #[oai(
        path = "/accounts/password-reset",
        method = "post",
        operation_id = "request_password_reset",
        tag = "ApiTag::Accounts"
    )]
    async fn reset(&self, Data(state): Data<&AppState>, body: Json<EmailBody>) -> Answer<AcceptedResponse> {
        accounts::request_password_reset(state, body.0.email, crate::now()).await?;
        Ok(accepted())
    }

    /// Set a new password with the token from the reset link (single use,
    /// 1 h). Every session of the user ends.
    #[oai(
        path = "/accounts/password-reset/confirm",
        method = "post",
        operation_id = "confirm_password_reset",
        tag = "ApiTag::Accounts"
    )]
    async fn reset_confirm(
        &self,
        Data(state): Data<&AppState>,
        body: Json<ResetConfirmBody>,
    ) -> Answer<DoneResponse> {
        let Json(body) = body;
        accounts::confirm_password_reset(state, body.token, body.new_password, crate::now()).await?;
        Ok(DoneResponse::Done)
    }

    /// The signed-in user's profile.
    #[oai(
        path = "/accounts/me",
        method = "get",
        operation_id = "get_profile",
        tag = "ApiTag::Accounts"
    )]
    async fn me(&self, Data(state): Data<&AppState>, auth: BearerAuth) -> Answer<ProfileResponse> {
        let (_, user) = signed_in_user(state, auth).await?;
        Ok(ProfileResponse::Ok(Json(accounts::profile(&user).into())))
    }

    /// Change the display name.
    #[oai(
        path = "/accounts/me",
        method = "patch",
        operation_id = "update_profile",
        tag = "ApiTag::Accounts"
    )]
    async fn patch_me(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        body: Json<ProfilePatch>,
    ) -> Answer<ProfileResponse> {
        let (_, user) = signed_in_user(state, auth).await?;
        let profile = accounts::update_profile(state, &user, body.0.name).await?;
        Ok(ProfileResponse::Ok(Json(profile.into())))
    }

    /// Change the password; the user's other sessions end, this one stays.
    #[oai(
        path = "/accounts/me/password",
        method = "post",
        operation_id = "change_password",
        tag = "ApiTag::Accounts"
    )]
    async fn change_password(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        body: Json<ChangePasswordBody>,
    ) -> Answer<DoneResponse> {
        let now = crate::now();
        let (claims, user) = signed_in_user(state, auth).await?;
        let Json(body) = body;
        accounts::change_password(
            state,
            &claims,
            &user,
            body.current_password,
            body.new_password,
            now,
        )
        .await?;
        Ok(DoneResponse::Done)
    }

    /// End every session (refresh chain) of the user.
    #[oai(
        path = "/accounts/me/logout-all",
        method = "post",
        operation_id = "logout_all",
        tag = "ApiTag::Accounts"
    )]
    async fn logout_all(&self, Data(state): Data<&AppState>, auth: BearerAuth) -> Answer<DoneResponse> {
        let now = crate::now();
        let (_, user) = signed_in_user(state, auth).await?;
        accounts::logout_all(state, &user, now).await?;
        Ok(DoneResponse::Done)
    }

    /// Delete the account (its password is required): the account, its
    /// sessions and pending tokens are gone, its access tokens stop working.
    #[oai(
        path = "/accounts/me",
        method = "delete",
        operation_id = "delete_account",
        tag = "ApiTag::Accounts"
    )]
    async fn delete_me(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        body: Json<DeleteAccountBody>,
    ) -> Answer<DoneResponse> {
        let (_, user) = signed_in_user(state, auth).await?;
        accounts::delete_account(state, &user, body.0.password).await?;
        Ok(DoneResponse::Done)
    }
}

fn required(field: &str) -> ProblemResponse {
    crate::error::Error::validation(vec![crate::error::FieldProblem::new(
        field,
        "required",
        "is required",
    )])
    .into()
}
