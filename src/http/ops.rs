//! Health, readiness and metrics.

use std::time::Duration;

use poem::web::Data;
use poem::{Response, handler};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTag;
use crate::app::AppState;

pub struct OpsApi;

#[derive(Object)]
#[oai(example)]
pub struct Status {
    /// `ok`, or `unavailable` when a dependency is down.
    pub status: String,
}

impl poem_openapi::types::Example for Status {
    fn example() -> Self {
        Status { status: "ok".into() }
    }
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(Json<Status>),
    /// The database does not answer.
    #[oai(status = 503)]
    Unavailable(Json<Status>),
}

#[OpenApi]
impl OpsApi {
    /// The process is alive.
    #[oai(
        path = "/health",
        method = "get",
        operation_id = "health",
        tag = "ApiTag::Operations"
    )]
    async fn health(&self) -> Json<Status> {
        Json(Status { status: "ok".into() })
    }

    /// The process can serve: its database is reachable.
    #[oai(
        path = "/ready",
        method = "get",
        operation_id = "ready",
        tag = "ApiTag::Operations"
    )]
    async fn ready(&self, Data(state): Data<&AppState>) -> ReadyResponse {
        if state.db.ping().await {
            ReadyResponse::Ready(Json(Status { status: "ok".into() }))
        } else {
            ReadyResponse::Unavailable(Json(Status {
                status: "unavailable".into(),
            }))
        }
    }
}

/// How long a scrape waits for the mail queue count before leaving it out.
const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`: Prometheus text exposition (see [`crate::metrics`]).
///
/// Unauthenticated, like `/health` and `/ready`: it holds counts only, never
/// an identifier or a secret. Expose it to the scraper's network, not the
/// internet (e.g. block it at the reverse proxy). Not in the OpenAPI document:
/// it is for operators' tooling, not API clients.
#[handler]
pub async fn metrics(Data(state): Data<&AppState>) -> Response {
    let depth = tokio::time::timeout(
        SCRAPE_DB_TIMEOUT,
        crate::store::mail::count_queued_mail(state.db.pool(), crate::now()),
    )
    .await
    .ok()
    .and_then(Result::ok);
    Response::builder()
        .content_type(crate::metrics::CONTENT_TYPE)
        .header("cache-control", "no-store")
        .body(state.metrics.render(depth))
}
