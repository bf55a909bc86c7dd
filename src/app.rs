//! The application: shared state, the OpenAPI service, middleware order,
//! binding, serving and graceful shutdown.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use poem::endpoint::BoxEndpoint;
use poem::http::{HeaderName, HeaderValue, StatusCode};
use poem::listener::{Acceptor, TcpAcceptor};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server};
use poem_openapi::OpenApiService;

use crate::config::{ConfigError, Settings};
use crate::http::accounts::AccountsApi;
use crate::http::admin::AdminApi;
use crate::http::body::limit_body;
use crate::http::discovery::{DiscoveryApi, ProviderMetadata};
use crate::http::headers::HeaderPolicy;
use crate::http::idle::IdleAcceptor;
use crate::http::oauth2::OAuth2Api;
use crate::http::ops::OpsApi;
use crate::http::session::SessionApi;
use crate::keys::{KeyFileError, KeyRing};
use crate::password::Hasher;
use crate::store::Db;
use crate::telemetry::request;

pub struct StateInner {
    pub settings: Settings,
    /// Without a trailing slash.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audiences: Vec<String>,
    pub db: Db,
    pub keys: Arc<KeyRing>,
    pub hasher: Hasher,
    /// This instance's logins waiting for their username's attempts in flight.
    pub login_waits: crate::oauth::LoginWaits,
    /// The discovery document, serialised once.
    pub discovery: Bytes,
    /// Delivers queued mail (SMTP or the outbox).
    pub mailer: Arc<crate::mail::Mailer>,
    /// Wakes the mail sender; `notify_one()` after committing queued mail.
    pub mail_wakeup: Arc<tokio::sync::Notify>,
    /// Prometheus counters; `GET /metrics` renders them.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Wrong client secrets per client (SPEC §10), in memory.
    pub secret_failures: crate::oauth::SecretFailureBudget,
    /// Clients for the token endpoints, dropped when any client changes.
    pub clients: crate::store::client_cache::ClientCache,
}

/// Everything a request may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

impl Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

type Apis = (OAuth2Api, DiscoveryApi, AccountsApi, SessionApi, AdminApi, OpsApi);

/// The OpenAPI service; it needs no state, so `gatehouse openapi` can print it.
pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (OAuth2Api, DiscoveryApi, AccountsApi, SessionApi, AdminApi, OpsApi),
        "gatehouse",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "An OAuth 2.0 / OpenID Connect identity provider. Clients authenticate with HTTP Basic \
             (`client_secret_basic`) or in the form body; users' calls carry a Bearer access token.",
    )
}

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    openapi_service().spec()
}

/// An endpoint built at its first request. The Swagger UI page (about
/// 1.7 MB: the whole UI bundle with the document inlined) and the document
/// as JSON and YAML were built at start and held for good, with the pages
/// of the binary they were copied from: about 3 MB of an idle server's
/// memory, for pages most servers never serve.
struct Lazy<F> {
    make: F,
    /// Concurrent first requests wait for one build without holding a worker.
    built: tokio::sync::OnceCell<BoxEndpoint<'static>>,
}

impl<F: Fn() -> BoxEndpoint<'static> + Send + Sync> Lazy<F> {
    fn new(make: F) -> Lazy<F> {
        Lazy {
            make,
            built: tokio::sync::OnceCell::new(),
        }
    }
}

impl<F: Fn() -> BoxEndpoint<'static> + Send + Sync> Endpoint for Lazy<F> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let built = self.built.get_or_init(|| async { (self.make)() }).await;
        built.call(req).await
    }
}

/// Builds the whole HTTP application around `state`.
pub fn routes(state: AppState) -> BoxEndpoint<'static> {
    let api = openapi_service();
    let policy = Arc::new(HeaderPolicy {
        cors_origins: state.settings.cors_origins.clone(),
        hsts: state.issuer.starts_with("https://"),
        request_timeout: Duration::from_secs(state.settings.request_timeout.unsigned_abs()),
    });
    Route::new()
        .at(
            "/verify-email",
            poem::get(crate::http::pages::verify_email_page).post(crate::http::pages::verify_email_submit),
        )
        .at(
            "/reset-password",
            poem::get(crate::http::pages::reset_password_page)
                .post(crate::http::pages::reset_password_submit),
        )
        .nest(
            "/docs",
            Lazy::new(|| openapi_service().swagger_ui().map_to_response().boxed()),
        )
        .at(
            "/login",
            poem::get(crate::http::signin::login_page).post(crate::http::signin::login_submit),
        )
        .at(
            "/consent",
            poem::get(crate::http::signin::consent_page).post(crate::http::signin::consent_submit),
        )
        .at(
            "/logout",
            poem::get(crate::http::signin::logout_page).post(crate::http::signin::logout_submit),
        )
        .at(
            "/openapi.json",
            Lazy::new(|| openapi_service().spec_endpoint().map_to_response().boxed()),
        )
        .at(
            "/openapi.yaml",
            Lazy::new(|| openapi_service().spec_endpoint_yaml().map_to_response().boxed()),
        )
        .at("/metrics", poem::get(crate::http::ops::metrics))
        .nest("/", api)
        .data(state.clone())
        .with(crate::http::limits::ClientIpLimit::new(&state))
        .around(move |ep, req| {
            let policy = policy.clone();
            let metrics = state.metrics.clone();
            async move { Ok(respond(ep, req, &policy, &metrics).await) }
        })
        .boxed()
}

/// Outermost layer: every failure gets its standard shape, every answer a
/// request id and the security headers.
async fn respond(
    ep: Arc<impl Endpoint>,
    req: Request,
    policy: &HeaderPolicy,
    metrics: &crate::metrics::Metrics,
) -> Response {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::<str>::from)
        .unwrap_or_else(|| new_request_id().into());
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    // Only the Origin is needed afterwards (CORS), not the whole header map.
    let origin = req.headers().get(poem::http::header::ORIGIN).cloned();
    let mut resp = match policy.preflight(&req) {
        Some(resp) => resp,
        // Reading the body counts against the deadline too (slow uploads).
        None => match tokio::time::timeout(policy.request_timeout, async {
            match limit_body(req).await {
                Ok(req) => request::serve(request_id.clone(), ep.call(req)).await,
                Err(status) => Err(poem::Error::from_status(status)),
            }
        })
        .await
        {
            Ok(Ok(resp)) => resp.into_response(),
            Ok(Err(err)) => crate::error::render_unhandled(&path, err),
            Err(_) => {
                tracing::warn!(request_id = %request_id, "request timed out");
                crate::error::render_unhandled(
                    &path,
                    poem::Error::from_status(StatusCode::SERVICE_UNAVAILABLE),
                )
            }
        },
    };
    policy.apply(&path, origin.as_ref(), &mut resp);
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(&X_REQUEST_ID, v);
    }
    // The template, never the concrete path: bounded labels, no ids in logs.
    let route = metrics.route(resp.data::<poem_openapi::OperationId>().map(|o| o.0), &path);
    let (status, elapsed) = (resp.status().as_u16(), started.elapsed());
    metrics.observe_request(&route, &method, status, elapsed);
    // Plain `str` values: recorded as they are, without the `fmt` machinery.
    tracing::info!(
        request_id = &*request_id,
        method = method.as_str(),
        route = &*route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// A connection with no read or write for this long is closed, unless the
/// request timeout is longer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection may sit idle. A request still running when its
/// connection times out would be dropped unanswered; every request ends (if
/// need be with a 503) within the request timeout, so this is longer.
fn idle_timeout(request_timeout: Duration) -> Duration {
    IDLE_TIMEOUT.max(request_timeout.saturating_add(Duration::from_secs(5)))
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An id for a request that brought none. Ids are unique, not secret (they
/// are echoed and logged), so they are a random per-process prefix and a
/// counter in UUID form (version 8, custom), without a call to the kernel's
/// RNG per request.
fn new_request_id() -> String {
    static PREFIX: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&PREFIX.to_be_bytes());
    bytes[8..].copy_from_slice(&count.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// A server, bound and ready to run.
pub struct Application {
    acceptor: TcpAcceptor,
    state: AppState,
    port: u16,
}

impl Application {
    /// Binds, connects the database, applies migrations, makes sure a key
    /// exists and loads the key ring.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| ConfigError {
                variable: "GATEHOUSE_LISTEN",
                problem: format!("cannot listen on {}: {e}", settings.listen),
            })?;
        let addr = listener.local_addr()?;
        let issuer = settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let audiences = settings.audience.clone().unwrap_or_else(|| vec![issuer.clone()]);
        let db = Db::connect(&settings.database_url).await?;
        db.migrate().await?;
        let now = crate::now();
        crate::keys::bootstrap(&db, &settings.keys_dir, now)
            .await
            .map_err(|e| match e.downcast_ref::<KeyFileError>() {
                Some(KeyFileError::Write { path, source }) => anyhow::Error::new(ConfigError {
                    variable: "GATEHOUSE_KEYS_DIR",
                    problem: format!(
                        "no key found and cannot write one to {}: {source}",
                        path.display()
                    ),
                }),
                Some(KeyFileError::Read { path, source }) => anyhow::Error::new(ConfigError {
                    variable: "GATEHOUSE_KEYS_DIR",
                    problem: format!("cannot read {}: {source}", path.display()),
                }),
                None => e,
            })?;
        // A retired key stays published while any token it signed may live.
        let keys = Arc::new(KeyRing::new(settings.keys_dir.clone(), settings.access_token_ttl));
        keys.reload(&db, now).await?;
        if keys.current().signer(now).is_none() {
            anyhow::bail!(
                "GATEHOUSE_KEYS_DIR: no usable signing key in {}",
                settings.keys_dir.display()
            );
        }
        let hasher = tokio::task::spawn_blocking(|| {
            crate::domain::preload_common_passwords();
            Hasher::new()
        })
        .await??;
        let discovery = Bytes::from(serde_json::to_vec(&ProviderMetadata::new(&issuer))?);
        let public_url = settings.public_url.clone().unwrap_or_else(|| issuer.clone());
        let mailer = Arc::new(crate::mail::Mailer::from_settings(&settings, &public_url)?);
        let acceptor = TcpAcceptor::from_tokio(listener).context("accepting on the listener")?;
        let port = addr.port();
        Ok(Application {
            acceptor,
            port,
            state: AppState(Arc::new(StateInner {
                settings,
                issuer,
                audiences,
                db,
                keys,
                hasher,
                login_waits: crate::oauth::LoginWaits::default(),
                discovery,
                mailer,
                mail_wakeup: Arc::new(tokio::sync::Notify::new()),
                metrics: Arc::new(crate::metrics::Metrics::new(
                    <Apis as poem_openapi::OpenApi>::meta(),
                )),
                secret_failures: crate::oauth::SecretFailureBudget::new(),
                clients: crate::store::client_cache::ClientCache::new(),
            })),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `signal` completes, then drains in-flight requests.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let reloader = tokio::spawn(reload_keys(self.state.clone()));
        let pruner = tokio::spawn(prune_regularly(self.state.clone()));
        let (stop_mail, mail_stop) = tokio::sync::watch::channel(false);
        let mut mail_sender = tokio::spawn(crate::mail::run_sender(
            self.state.db.clone(),
            self.state.mailer.clone(),
            self.state.mail_wakeup.clone(),
            mail_stop,
        ));
        tracing::info!(
            issuer = %self.state.issuer,
            local = ?self.acceptor.local_addr(),
            "gatehouse listening"
        );
        let request_timeout = Duration::from_secs(self.state.settings.request_timeout.unsigned_abs());
        let acceptor = IdleAcceptor::new(self.acceptor, idle_timeout(request_timeout));
        let result = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(routes(self.state.clone()), signal, Some(Duration::from_secs(20)))
            .await;
        reloader.abort();
        pruner.abort();
        // Let the message in flight finish; an unfinished one is retried
        // after its lease by whichever instance runs next.
        let _ = stop_mail.send(true);
        if tokio::time::timeout(Duration::from_secs(10), &mut mail_sender)
            .await
            .is_err()
        {
            tracing::warn!("mail sender did not stop within 10 s");
            mail_sender.abort();
        }
        self.state.db.close().await;
        result.context("serving")
    }
}

/// Deletes dead rows at start and every ten minutes (SPEC §2: bounded storage).
async fn prune_regularly(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match crate::store::prune::prune(&state.db, crate::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned expired rows"),
            Err(e) => tracing::warn!("pruning failed: {e:#}"),
        }
    }
}

/// Picks up `keys rotate` / `keys retire` and client changes from any
/// instance or the CLI, once a second.
async fn reload_keys(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Bounded, so a database that stopped answering cannot stall the
        // loop (the client cache stops trusting itself meanwhile).
        let reload = tokio::time::timeout(Duration::from_secs(2), state.keys.reload(&state.db, crate::now()));
        if let Err(e) = reload
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 2 s")))
        {
            tracing::warn!("reloading keys failed: {e:#}");
        }
        let follow = tokio::time::timeout(Duration::from_secs(2), state.clients.follow(&state.db));
        if let Err(e) = follow
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 2 s")))
        {
            // Without news of changes, nothing cached can be trusted.
            state.clients.invalidate();
            tracing::warn!("checking for client changes failed: {e:#}");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_outlives_its_longest_request() {
        assert_eq!(idle_timeout(Duration::from_secs(30)), IDLE_TIMEOUT);
        assert_eq!(idle_timeout(Duration::from_secs(120)), Duration::from_secs(125));
        assert_eq!(idle_timeout(Duration::MAX), Duration::MAX);
    }
}
