//! `/admin/*`: users, clients and keys, for users with the role `admin`.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::oauth2::BearerAuth;
use super::{ApiTag, signed_in_admin};
use crate::admin::{self, ClientSpec};
use crate::app::AppState;
use crate::error::{FieldProblem, ProblemResponse};
use crate::store::client::Client;
use crate::store::user::{UserRow, list_users_page};

pub struct AdminApi;

/// A user as an administrator sees them.
#[derive(Debug, Object)]
pub struct AdminUser {
    pub id: String,
    pub email: String,
    pub email_verified: bool,
    /// `null` until the user sets one.
    #[oai(nullable)]
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub disabled: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl From<&UserRow> for AdminUser {
    fn from(u: &UserRow) -> AdminUser {
        AdminUser {
            id: u.id.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified_at.is_some(),
            name: u.name.clone(),
            roles: u.roles(),
            disabled: u.disabled_at.is_some(),
            created_at: crate::rfc3339(u.created_at),
        }
    }
}

#[derive(Debug, Object)]
pub struct UsersPage {
    pub users: Vec<AdminUser>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
pub struct RolesBody {
    /// The complete new set of roles; `[]` clears them.
    pub roles: Option<Vec<String>>,
}

/// A client as an administrator sees it.
#[derive(Debug, Object)]
pub struct ClientBody {
    pub client_id: String,
    pub name: String,
    pub public: bool,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    /// Where authorization codes may be sent (exact match).
    pub redirect_uris: Vec<String>,
    /// Where `/logout` may send the browser afterwards (exact match).
    pub post_logout_redirect_uris: Vec<String>,
    /// No consent page; may use the `/session` cookie API.
    pub first_party: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Shown once: on creation and on rotation; absent otherwise.
    #[oai(skip_serializing_if_is_none)]
    pub client_secret: Option<String>,
}

impl ClientBody {
    fn new(c: &Client, secret: Option<String>) -> ClientBody {
        ClientBody {
            client_id: c.id.clone(),
            name: c.name.clone(),
            public: c.is_public(),
            grant_types: c.grants.iter().map(|g| g.as_str().to_owned()).collect(),
            scopes: c.scopes.iter().map(str::to_owned).collect(),
            redirect_uris: c.redirect_uris.iter().map(|u| u.as_str().to_owned()).collect(),
            post_logout_redirect_uris: c
                .post_logout_redirect_uris
                .iter()
                .map(|u| u.as_str().to_owned())
                .collect(),
            first_party: c.first_party,
            created_at: crate::rfc3339(c.created_at),
            client_secret: secret,
        }
    }
}

#[derive(Debug, Object)]
pub struct NewClientBody {
    /// Required.
    pub name: Option<String>,
    /// Required: `password`, `refresh_token`, `client_credentials`, `authorization_code`.
    pub grant_types: Option<Vec<String>>,
    /// Scopes the client may ask for besides the OIDC ones.
    pub scopes: Option<Vec<String>>,
    /// A public client has no secret. Default false.
    pub public: Option<bool>,
    /// Where authorization codes may be sent; required with `authorization_code`.
    pub redirect_uris: Option<Vec<String>>,
    /// Where `/logout` may send the browser afterwards.
    pub post_logout_redirect_uris: Option<Vec<String>>,
    /// No consent page; may use the `/session` cookie API. Default false.
    pub first_party: Option<bool>,
}

/// What is given replaces what was; what is absent stays.
#[derive(Debug, Object)]
pub struct ClientPatch {
    pub name: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub redirect_uris: Option<Vec<String>>,
    pub post_logout_redirect_uris: Option<Vec<String>>,
    pub first_party: Option<bool>,
}

#[derive(Debug, Object)]
pub struct SecretBody {
    pub client_id: String,
    /// Shown once.
    pub client_secret: String,
}

#[derive(Debug, Object)]
pub struct KeyBody {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// `pending`, `active`, `retired` or `expired`.
    pub state: String,
    pub created_at: String,
    pub signs_from: String,
    /// `null` while the key has not been retired.
    #[oai(nullable)]
    pub retired_at: Option<String>,
}

#[derive(ApiResponse)]
pub enum UserResponse {
    #[oai(status = 200)]
    Ok(Json<AdminUser>),
}

#[derive(ApiResponse)]
pub enum UsersResponse {
    #[oai(status = 200)]
    Ok(Json<UsersPage>),
}

#[derive(ApiResponse)]
pub enum ClientResponse {
    /// The client.
    #[oai(status = 200)]
    Ok(Json<ClientBody>),
    /// Created; the secret is shown this once.
    #[oai(status = 201)]
    Created(Json<ClientBody>),
}

#[derive(ApiResponse)]
pub enum ClientsResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<ClientBody>>),
}

#[derive(ApiResponse)]
pub enum SecretResponse {
    /// The new secret, shown once.
    #[oai(status = 200)]
    Ok(Json<SecretBody>),
}

#[derive(ApiResponse)]
pub enum KeysResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<KeyBody>>),
}

#[derive(ApiResponse)]
pub enum KeyResponse {
    /// The new key: published now, signing from `signs_from`.
    #[oai(status = 201)]
    Created(Json<KeyBody>),
}

#[derive(ApiResponse)]
pub enum DeletedResponse {
    /// Deleted.
    #[oai(status = 204)]
    Deleted,
}

type Answer<T> = Result<T, ProblemResponse>;

const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 200;

#[OpenApi(prefix_path = "/admin", tag = "ApiTag::Admin")]
impl AdminApi {
    /// Users, ordered by id, a page at a time.
    #[oai(path = "/users", method = "get", operation_id = "admin_list_users")]
    async fn list_users(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1–200 (default 50).
        limit: Query<Option<i64>>,
    ) -> Answer<UsersResponse> {
        signed_in_admin(state, auth).await?;
        let limit = limit.0.unwrap_or(PAGE_DEFAULT);
        if !(1..=PAGE_MAX).contains(&limit) {
            return Err(crate::error::Error::validation(vec![FieldProblem::new(
                "limit",
                "out_of_range",
                "must be 1 to 200",
            )])
            .into());
        }
        let cursor = cursor.0.filter(|c| !c.is_empty() && !c.contains('\0'));
        let rows = list_users_page(state.db.pool(), cursor.as_deref(), limit + 1)
            .await
            .map_err(crate::error::Error::from)?;
        let more = rows.len() as i64 > limit;
        let users: Vec<AdminUser> = rows.iter().take(limit as usize).map(AdminUser::from).collect();
        let next_cursor = if more {
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok(UsersResponse::Ok(Json(UsersPage { users, next_cursor })))
    }

    /// One user.
    #[oai(path = "/users/:id", method = "get", operation_id = "admin_get_user")]
    async fn get_user(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<UserResponse> {
        signed_in_admin(state, auth).await?;
        let user = admin::find_user(&state.db, &id.0).await?;
        Ok(UserResponse::Ok(Json((&user).into())))
    }

    /// Delete a user with their sessions, tokens and queued mail.
    #[oai(path = "/users/:id", method = "delete", operation_id = "admin_delete_user")]
    async fn delete_user(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<DeletedResponse> {
        signed_in_admin(state, auth).await?;
        admin::delete_user(&state.db, &id.0).await?;
        Ok(DeletedResponse::Deleted)
    }

    /// Replace a user's roles; they appear in the next access token.
    #[oai(path = "/users/:id/roles", method = "put", operation_id = "admin_set_roles")]
    async fn set_roles(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
        body: Json<RolesBody>,
    ) -> Answer<UserResponse> {
        signed_in_admin(state, auth).await?;
        let Some(roles) = body.0.roles else {
            return Err(crate::error::Error::validation(vec![FieldProblem::new(
                "roles",
                "required",
                "is required",
            )])
            .into());
        };
        let user = admin::set_roles(&state.db, &id.0, &roles).await?;
        Ok(UserResponse::Ok(Json((&user).into())))
    }

    /// Disable a user: every session ends at once.
    #[oai(
        path = "/users/:id/disable",
        method = "post",
        operation_id = "admin_disable_user"
    )]
    async fn disable_user(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<UserResponse> {
        signed_in_admin(state, auth).await?;
        let user = admin::set_disabled(&state.db, &id.0, true, crate::now()).await?;
        Ok(UserResponse::Ok(Json((&user).into())))
    }

    /// Enable a disabled user.
    #[oai(
        path = "/users/:id/enable",
        method = "post",
        operation_id = "admin_enable_user"
    )]
    async fn enable_user(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<UserResponse> {
        signed_in_admin(state, auth).await?;
        let user = admin::set_disabled(&state.db, &id.0, false, crate::now()).await?;
        Ok(UserResponse::Ok(Json((&user).into())))
    }

    /// Every client.
    #[oai(path = "/clients", method = "get", operation_id = "admin_list_clients")]
    async fn list_clients(&self, Data(state): Data<&AppState>, auth: BearerAuth) -> Answer<ClientsResponse> {
        signed_in_admin(state, auth).await?;
        let clients = crate::store::client::list_clients(state.db.pool())
            .await
            .map_err(crate::error::Error::from)?;
        Ok(ClientsResponse::Ok(Json(
            clients.iter().map(|c| ClientBody::new(c, None)).collect(),
        )))
    }

    /// Register a client; a confidential one's secret is shown this once.
    #[oai(path = "/clients", method = "post", operation_id = "admin_create_client")]
    async fn create_client(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        body: Json<NewClientBody>,
    ) -> Answer<ClientResponse> {
        signed_in_admin(state, auth).await?;
        let Json(body) = body;
        let spec = ClientSpec {
            name: body.name,
            grants: body.grant_types,
            scopes: body.scopes,
            public: body.public.unwrap_or(false),
            redirect_uris: body.redirect_uris,
            post_logout_redirect_uris: body.post_logout_redirect_uris,
            first_party: body.first_party,
        };
        let (client, secret) = admin::create_client(&state.db, spec, crate::now()).await?;
        Ok(ClientResponse::Created(Json(ClientBody::new(
            &client,
            secret.map(|s| s.expose().to_owned()),
        ))))
    }

    /// One client.
    #[oai(path = "/clients/:id", method = "get", operation_id = "admin_get_client")]
    async fn get_client(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<ClientResponse> {
        signed_in_admin(state, auth).await?;
        let client = admin::find_client(&state.db, &id.0).await?;
        Ok(ClientResponse::Ok(Json(ClientBody::new(&client, None))))
    }

    /// Change a client's name, grants, scopes, URIs or first-party flag.
    #[oai(path = "/clients/:id", method = "patch", operation_id = "admin_update_client")]
    async fn update_client(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
        body: Json<ClientPatch>,
    ) -> Answer<ClientResponse> {
        signed_in_admin(state, auth).await?;
        let Json(body) = body;
        let spec = ClientSpec {
            name: body.name,
            grants: body.grant_types,
            scopes: body.scopes,
            public: false,
            redirect_uris: body.redirect_uris,
            post_logout_redirect_uris: body.post_logout_redirect_uris,
            first_party: body.first_party,
        };
        let client = admin::update_client(&state.db, &id.0, spec).await?;
        state.clients.invalidate();
        Ok(ClientResponse::Ok(Json(ClientBody::new(&client, None))))
    }

    /// Delete a client; its sessions and refresh tokens end.
    #[oai(
        path = "/clients/:id",
        method = "delete",
        operation_id = "admin_delete_client"
    )]
    async fn delete_client(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<DeletedResponse> {
        signed_in_admin(state, auth).await?;
        admin::delete_client(&state.db, &id.0).await?;
        state.clients.invalidate();
        Ok(DeletedResponse::Deleted)
    }

    /// Give a confidential client a new secret, shown once.
    #[oai(
        path = "/clients/:id/secret",
        method = "post",
        operation_id = "admin_rotate_client_secret"
    )]
    async fn rotate_secret(
        &self,
        Data(state): Data<&AppState>,
        auth: BearerAuth,
        id: Path<String>,
    ) -> Answer<SecretResponse> {
        signed_in_admin(state, auth).await?;
        let secret = admin::rotate_client_secret(&state.db, &id.0).await?;
        state.clients.invalidate();
        Ok(SecretResponse::Ok(Json(SecretBody {
            client_id: id.0,
            client_secret: secret.expose().to_owned(),
        })))
    }

    /// Signing keys and their state.
    #[oai(path = "/keys", method = "get", operation_id = "admin_list_keys")]
    async fn list_keys(&self, Data(state): Data<&AppState>, auth: BearerAuth) -> Answer<KeysResponse> {
        signed_in_admin(state, auth).await?;
        let keys = admin::keys(&state.db, &state.settings, crate::now()).await?;
        Ok(KeysResponse::Ok(Json(
            keys.into_iter()
                .map(|(row, key_state)| KeyBody {
                    kid: row.kid,
                    state: key_state.as_str().to_owned(),
                    created_at: crate::rfc3339(row.created_at),
                    signs_from: crate::rfc3339(row.signs_from),
                    retired_at: row.retired_at.map(crate::rfc3339),
                })
                .collect(),
        )))
    }

    /// Add a signing key: published at once, signing after the JWKS max-age.
    #[oai(path = "/keys/rotate", method = "post", operation_id = "admin_rotate_key")]
    async fn rotate_key(&self, Data(state): Data<&AppState>, auth: BearerAuth) -> Answer<KeyResponse> {
        signed_in_admin(state, auth).await?;
        let now = crate::now();
        let (kid, signs_from) = admin::rotate_key(&state.db, &state.settings).await?;
        Ok(KeyResponse::Created(Json(KeyBody {
            kid,
            state: "pending".into(),
            created_at: crate::rfc3339(now),
            signs_from: crate::rfc3339(signs_from),
            retired_at: None,
        })))
    }
}
