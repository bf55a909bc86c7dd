//! Request bodies: at most [`MAX_BODY`] bytes, whatever the transfer encoding.

use poem::http::StatusCode;
use poem::{Body, Request};

/// Every body gatehouse accepts is a small form or JSON document.
pub const MAX_BODY: usize = 64 * 1024;

/// Reads the body with a cap; `Err` carries the status to answer with.
pub async fn limit_body(mut req: Request) -> Result<Request, StatusCode> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let body = req.take_body();
    match body.into_bytes_limit(MAX_BODY).await {
        Ok(bytes) => {
            req.set_body(Body::from_bytes(bytes));
            Ok(req)
        }
        Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}
