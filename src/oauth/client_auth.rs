//! Client authentication (RFC 6749 §2.3): `client_secret_basic`,
//! `client_secret_post`, or a public client naming itself by `client_id`.

use secrecy::{ExposeSecret, SecretString};

use crate::app::AppState;
use crate::error::{Challenge, Error, OAuthCode};
use crate::store::client::{Client, find_client};
use crate::tokens::TokenDigest;

/// What the request carried, before any check.
#[derive(Debug, Default)]
pub struct ClientCredentials {
    /// From `Authorization: Basic`, already form-decoded (RFC 6749 §2.3.1).
    pub basic: Option<(String, SecretString)>,
    /// `client_id` from the form body.
    pub form_id: Option<String>,
    /// `client_secret` from the form body.
    pub form_secret: Option<SecretString>,
}

/// Authenticates the client; every failure is `invalid_client`, with a
/// `Basic` challenge when Basic was used.
pub async fn authenticate_client(state: &AppState, creds: ClientCredentials) -> Result<Client, Error> {
    let challenge = if creds.basic.is_some() {
        Challenge::Basic
    } else {
        Challenge::None
    };
    let (id, secret) = match (creds.basic, creds.form_id, creds.form_secret) {
        // RFC 6749 §2.3: "The client MUST NOT use more than one authentication method".
        (Some(_), _, Some(_)) => {
            return Err(Error::invalid_request(
                "use one client authentication method, not two",
            ));
        }
        (Some((id, _)), Some(form_id), None) if form_id != id => {
            return Err(Error::invalid_request(
                "client_id differs from the authenticated client",
            ));
        }
        (Some((id, secret)), _, None) => (id, Some(secret)),
        (None, Some(id), secret) => (id, secret),
        (None, None, _) => return Err(Error::invalid_client(challenge)),
    };
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(Error::invalid_client(challenge));
    }
    let Some(client) = find_client(state.db.pool(), &id).await? else {
        return Err(Error::invalid_client(challenge));
    };
    match (&client.secret_digest, secret) {
        (Some(stored), Some(given)) if stored.matches(&TokenDigest::of(given.expose_secret())) => Ok(client),
        (None, None) => Ok(client),
        (Some(_), Some(_)) => {
            tracing::warn!(event = "client_auth_failed", client_id = %client.id, "wrong client secret");
            Err(Error::invalid_client(challenge))
        }
        // A confidential client without its secret, or a public one with a secret.
        _ => Err(Error::OAuth {
            code: OAuthCode::InvalidClient,
            description: None,
            challenge,
        }),
    }
}
