//! OAuth clients.

use anyhow::Context;
use sqlx::{Any, Executor, FromRow};

use crate::domain::{GrantType, RedirectUri, Scope};
use crate::tokens::TokenDigest;

#[derive(Debug, FromRow)]
struct ClientRow {
    id: String,
    name: String,
    secret_digest: Option<Vec<u8>>,
    grant_types: String,
    scopes: String,
    created_at: i64,
    redirect_uris: String,
    post_logout_redirect_uris: String,
    first_party: i64,
}

/// A registered client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// `None` for a public client.
    pub secret_digest: Option<TokenDigest>,
    pub grants: Vec<GrantType>,
    /// The scopes it was created with (`--scope`).
    pub scopes: Scope,
    pub created_at: i64,
    /// Where authorization responses may go (SPEC §11), exact.
    pub redirect_uris: Vec<RedirectUri>,
    /// Where `/logout` may send the browser afterwards.
    pub post_logout_redirect_uris: Vec<RedirectUri>,
    /// The operator's own app: no consent page, may use `/session/*`.
    pub first_party: bool,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.secret_digest.is_none()
    }

    pub fn has_grant(&self, grant: GrantType) -> bool {
        self.grants.contains(&grant)
    }

    /// A client with a grant through which it acts for users.
    pub fn acts_for_users(&self) -> bool {
        self.grants.iter().any(|g| g.acts_for_users())
    }

    /// The registered redirect URI that `requested` names, if any.
    pub fn redirect_uri(&self, requested: &str) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|r| r.matches(requested))
    }

    /// A registered post-logout redirect URI, matched exactly.
    pub fn post_logout_redirect_uri(&self, requested: &str) -> Option<&RedirectUri> {
        self.post_logout_redirect_uris
            .iter()
            .find(|r| r.as_str() == requested)
    }
}

fn parse_uris(text: &str) -> anyhow::Result<Vec<RedirectUri>> {
    text.split(' ')
        .filter(|u| !u.is_empty())
        .map(|u| RedirectUri::parse(u).map_err(|e| anyhow::anyhow!("stored redirect URI {u:?}: {e}")))
        .collect()
}

fn join_uris(uris: &[RedirectUri]) -> String {
    uris.iter().map(RedirectUri::as_str).collect::<Vec<_>>().join(" ")
}

impl TryFrom<ClientRow> for Client {
    type Error = anyhow::Error;

    fn try_from(row: ClientRow) -> anyhow::Result<Client> {
        let secret_digest = match row.secret_digest {
            Some(bytes) => Some(TokenDigest::from_stored(&bytes).context("stored secret digest")?),
            None => None,
        };
        let grants = row
            .grant_types
            .split(' ')
            .filter(|g| !g.is_empty())
            .map(|g| GrantType::parse(g).with_context(|| format!("stored grant type {g:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let scopes = Scope::parse(&row.scopes).map_err(|e| anyhow::anyhow!("stored scopes: {e}"))?;
        Ok(Client {
            id: row.id,
            name: row.name,
            secret_digest,
            grants,
            scopes,
            created_at: row.created_at,
            redirect_uris: parse_uris(&row.redirect_uris)?,
            post_logout_redirect_uris: parse_uris(&row.post_logout_redirect_uris)?,
            first_party: row.first_party != 0,
        })
    }
}

const COLUMNS: &str = "id, name, secret_digest, grant_types, scopes, created_at, redirect_uris, \
                       post_logout_redirect_uris, first_party";

#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_client<'e>(ex: impl Executor<'e, Database = Any>, client: &Client) -> anyhow::Result<()> {
    let grants: Vec<&str> = client.grants.iter().map(|g| g.as_str()).collect();
    sqlx::query(
        "insert into client (id, name, secret_digest, grant_types, scopes, created_at, redirect_uris, \
         post_logout_redirect_uris, first_party) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&client.id)
    .bind(&client.name)
    .bind(client.secret_digest.as_ref().map(|d| d.as_bytes().to_vec()))
    .bind(grants.join(" "))
    .bind(client.scopes.to_string())
    .bind(client.created_at)
    .bind(join_uris(&client.redirect_uris))
    .bind(join_uris(&client.post_logout_redirect_uris))
    .bind(i64::from(client.first_party))
    .execute(ex)
    .await
    .context("insert client")?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_client<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> anyhow::Result<Option<Client>> {
    let row: Option<ClientRow> = sqlx::query_as(&format!("select {COLUMNS} from client where id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await
        .context("select client")?;
    row.map(Client::try_from).transpose()
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_clients<'e>(ex: impl Executor<'e, Database = Any>) -> anyhow::Result<Vec<Client>> {
    let rows: Vec<ClientRow> =
        sqlx::query_as(&format!("select {COLUMNS} from client order by created_at, id"))
            .fetch_all(ex)
            .await
            .context("select clients")?;
    rows.into_iter().map(Client::try_from).collect()
}

/// Deletes a client; its sessions and refresh tokens go with it. False if absent.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_client<'e>(ex: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("delete from client where id = $1")
        .bind(id)
        .execute(ex)
        .await
        .context("delete client")?;
    Ok(done.rows_affected() == 1)
}

/// Replaces a confidential client's secret. False if absent or public.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update_client_secret<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    digest: &TokenDigest,
) -> anyhow::Result<bool> {
    let done =
        sqlx::query("update client set secret_digest = $1 where id = $2 and secret_digest is not null")
            .bind(digest.as_bytes().to_vec())
            .bind(id)
            .execute(ex)
            .await
            .context("update client secret")?;
    Ok(done.rows_affected() == 1)
}

/// Replaces a client's name, grants, scopes, URIs and first-party flag. False if absent.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn update_client<'e>(
    ex: impl Executor<'e, Database = Any>,
    client: &Client,
) -> anyhow::Result<bool> {
    let grants: Vec<&str> = client.grants.iter().map(|g| g.as_str()).collect();
    let done = sqlx::query(
        "update client set name = $1, grant_types = $2, scopes = $3, redirect_uris = $4, \
         post_logout_redirect_uris = $5, first_party = $6 where id = $7",
    )
    .bind(&client.name)
    .bind(grants.join(" "))
    .bind(client.scopes.to_string())
    .bind(join_uris(&client.redirect_uris))
    .bind(join_uris(&client.post_logout_redirect_uris))
    .bind(i64::from(client.first_party))
    .bind(&client.id)
    .execute(ex)
    .await
    .context("update client")?;
    Ok(done.rows_affected() == 1)
}
