//! Client authentication (RFC 6749 §2.3): `client_secret_basic`,
//! `client_secret_post`, or a public client naming itself by `client_id`;
//! and the per-client failure budget for wrong secrets (SPEC §10).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};

use crate::app::AppState;
use crate::error::{Challenge, Error, OAuthCode};
use crate::store::client::Client;
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
pub async fn authenticate_client(state: &AppState, creds: ClientCredentials) -> Result<Arc<Client>, Error> {
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
    let Some(client) = state.clients.find(&state.db, &id).await? else {
        return Err(Error::invalid_client(challenge));
    };
    match (&client.secret_digest, secret) {
        (Some(stored), Some(given)) if stored.matches(&TokenDigest::of(given.expose_secret())) => Ok(client),
        (None, None) => Ok(client),
        (Some(_), Some(_)) => {
            tracing::warn!(event = "client_auth_failed", client_id = %client.id, "wrong client secret");
            if let Err(retry_after) = state.secret_failures.spend(&client.id) {
                tracing::warn!(event = "rate_limited", client_id = %client.id, retry_after, "client secret failure budget spent");
                state.metrics.rate_limited();
                return Err(Error::RateLimited { retry_after });
            }
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

/// The per-client failure budget for wrong client secrets (SPEC §10): a
/// client's first [`WRONG_SECRET_BURST`] wrong secrets are answered
/// `invalid_client` as usual, then one per [`WRONG_SECRET_EVERY`]; beyond
/// that a wrong secret is answered 429 `temporarily_unavailable` with
/// `Retry-After`.
///
/// The secret is checked before the budget, so a correct secret always
/// authenticates at once: a stranger cannot lock a client out by failing in
/// its name. That also means no answer to a wrong guess can hide that it was
/// wrong, so delaying it would slow an attacker only by holding connections
/// open on our side; a 429 costs nothing, tells a misconfigured client to back
/// off, and is flagged in the log and in `gatehouse_rate_limited_total`.
/// Client secrets are 256-bit random values: the budget keeps guessing noisy
/// and cheap for us, it is not what makes guessing hopeless. It is kept in
/// memory per instance (a lost budget after a restart costs nothing), keyed by
/// existing client ids only, so it cannot grow beyond the clients there are;
/// stale entries are dropped on a timer all the same.
pub struct SecretFailureBudget {
    limiter: DefaultKeyedRateLimiter<String>,
    started: Instant,
    /// Milliseconds since `started` when stale entries are next dropped.
    next_prune: AtomicU64,
}

/// Wrong secrets a client may see answered before the budget bites.
pub const WRONG_SECRET_BURST: u32 = 10;
/// Then one wrong secret per this long (10 a minute).
pub const WRONG_SECRET_EVERY: Duration = Duration::from_secs(6);
const PRUNE_EVERY_MS: u64 = 60_000;

impl SecretFailureBudget {
    pub fn new() -> SecretFailureBudget {
        let burst = NonZeroU32::new(WRONG_SECRET_BURST).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(WRONG_SECRET_EVERY)
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(burst);
        SecretFailureBudget {
            limiter: RateLimiter::keyed(quota),
            started: Instant::now(),
            next_prune: AtomicU64::new(PRUNE_EVERY_MS),
        }
    }

    /// Spends one wrong secret of `client_id`'s budget; when it is spent,
    /// returns the whole seconds (rounded up, at least 1) until it refills.
    pub fn spend(&self, client_id: &str) -> Result<(), u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_prune.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_prune
                .compare_exchange(due, now + PRUNE_EVERY_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&client_id.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
            })
    }
}

impl Default for SecretFailureBudget {
    fn default() -> Self {
        SecretFailureBudget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secrets_are_budgeted_per_client() {
        let budget = SecretFailureBudget::new();
        for n in 0..WRONG_SECRET_BURST {
            assert!(budget.spend("a").is_ok(), "wrong secret {n}");
        }
        let retry_after = budget.spend("a").unwrap_err();
        assert!((1..=6).contains(&retry_after), "{retry_after}");
        assert!(budget.spend("b").is_ok(), "another client has its own budget");
    }
}
