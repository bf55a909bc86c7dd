//! The request a line is logged for.
//!
//! Every line logged while its endpoint runs names it: in JSON as the
//! outermost span, `{"request_id":…,"name":"request"}`, as a `request` span
//! did before; in the pretty format as a last field, `request_id=…`. The id
//! is a task-local value rather than a tracing span: creating, entering and
//! closing a span for every request cost about a tenth of what the server
//! spent on a JWKS answer, while this costs a pointer copy per poll.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// Runs `fut` as the request `id`.
pub fn serve<F: Future>(id: Arc<str>, fut: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id, fut)
}

/// The request being served here, if any; to hand to [`run_for`] on
/// another thread.
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Runs `f` on this thread as the request `id` (a job another thread took
/// over from it).
pub fn run_for<R>(id: Option<Arc<str>>, f: impl FnOnce() -> R) -> R {
    match id {
        Some(id) => REQUEST_ID.sync_scope(id, f),
        None => f(),
    }
}

/// Calls `f` with the request id, if a request is being served here.
pub(super) fn with_id<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    REQUEST_ID.try_with(|id| f(id)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_there_while_the_request_is_served_and_on_a_thread_it_is_handed_to() {
        assert!(current().is_none());
        let seen = serve("r-1".into(), async {
            tokio::task::yield_now().await;
            let id = current();
            let on_thread = std::thread::spawn(move || run_for(id, || with_id(str::to_owned)))
                .join()
                .unwrap();
            (with_id(str::to_owned), on_thread)
        })
        .await;
        assert_eq!(seen, (Some("r-1".to_owned()), Some("r-1".to_owned())));
        assert!(current().is_none(), "gone when the request is");
    }
}
