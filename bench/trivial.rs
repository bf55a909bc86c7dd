//! The trivial-handler ceiling: poem answering `GET /` with a constant, on
//! the same multi-thread tokio runtime as gatehouse (one worker per core).
//!
//! `trivial 127.0.0.1:18090`

use poem::listener::TcpListener;
use poem::{Route, get, handler};

#[handler]
fn hello() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    poem::Server::new(TcpListener::bind(addr))
        .run(Route::new().at("/", get(hello)))
        .await
}
