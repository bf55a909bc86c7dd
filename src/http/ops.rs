//! Health and readiness.

use poem::web::Data;
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
