//! The small HTML pages that mail links open: `/verify-email` and
//! `/reset-password`, and the template the sign-in pages share
//! ([`crate::http::signin`]). Plain forms (they work with JavaScript off),
//! no external assets, a strict CSP whose only allowance is the hash of the
//! inline stylesheet; the token travels only in our own form posts.

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use poem::http::StatusCode;
use poem::web::{Data, Form, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;

use crate::accounts;
use crate::app::AppState;
use crate::error::Error;
use crate::mail::templates::escape_html;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;\
line-height:1.5;color:#1b1b1b}h1{font-size:1.4rem}label{display:block;margin:1rem 0 .25rem}\
input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}button{margin-top:1rem;padding:.6rem 1.2rem;\
font-size:1rem}.error{color:#a40000}.ok{color:#1d6b1d}.secondary{background:none;border:1px solid #888}\
ul.scopes{padding-left:1.2rem}.muted{color:#555;font-size:.9rem}";

/// `Content-Security-Policy` of every page: nothing but our inline style.
static CSP: LazyLock<String> = LazyLock::new(|| csp(&[]));

/// The policy, letting our forms' redirects end at `form_targets` too
/// (browsers check `form-action` on every redirect a form post follows).
fn csp(form_targets: &[String]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, STYLE.as_bytes());
    let mut form_action = String::from("'self'");
    for target in form_targets {
        form_action.push(' ');
        form_action.push_str(target);
    }
    format!(
        "default-src 'none'; style-src 'sha256-{}'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
        STANDARD.encode(digest.as_ref())
    )
}

/// A whole page around `body` (already HTML).
pub(crate) fn html(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · gatehouse</title><style>{STYLE}</style></head>\n<body><main>\n<h1>{title}</h1>\n{body}</main></body></html>\n",
        title = escape_html(title),
    )
}

/// A page with one message paragraph, as HTML.
pub(crate) fn message_html(title: &str, text: &str, class: &str) -> String {
    html(
        title,
        &format!("<p class=\"{class}\">{}</p>\n", escape_html(text)),
    )
}

/// The pages' `Content-Security-Policy`.
pub(crate) fn page_csp() -> String {
    CSP.clone()
}

pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    page_sending_to(status, title, body, &[])
}

/// [`page`] whose forms may end at `form_targets` (a client's origin).
pub(crate) fn page_sending_to(
    status: StatusCode,
    title: &str,
    body: &str,
    form_targets: &[String],
) -> Response {
    let policy = if form_targets.is_empty() {
        CSP.clone()
    } else {
        csp(form_targets)
    };
    let html = html(title, body);
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header("Content-Security-Policy", policy)
        .header("Cache-Control", "no-store")
        .body(html)
}

/// Logs a failure on our side; true when it is the database being out of
/// reach (the next try may well work) rather than a bug.
pub(crate) fn log_failure(what: &str, e: &anyhow::Error) -> bool {
    let unavailable = crate::error::database_unavailable(e);
    if unavailable {
        tracing::warn!(error = %format!("{e:#}"), page = what, "database unavailable");
    } else {
        tracing::error!(error = %format!("{e:#}"), page = what, "internal error");
    }
    unavailable
}

/// Logs a failure on our side and answers it: 503 while the database is out
/// of reach, 500 otherwise.
pub(crate) fn failure_page(what: &str, e: &anyhow::Error) -> Response {
    if log_failure(what, e) {
        message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "The service is briefly unavailable. Try again in a moment.",
            "error",
        )
    } else {
        message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Please try again later.",
            "error",
        )
    }
}

pub(crate) fn message(status: StatusCode, title: &str, text: &str, class: &str) -> Response {
    page(
        status,
        title,
        &format!("<p class=\"{class}\">{}</p>\n", escape_html(text)),
    )
}

/// A form post whose `Origin`, when present and not `null`, is not ours is refused.
pub(crate) fn foreign_origin(state: &AppState, req: &Request) -> bool {
    let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) else {
        return false;
    };
    if origin == "null" {
        return false;
    }
    !origin.eq_ignore_ascii_case(super::cookies::issuer_origin(&state.issuer))
}

pub(crate) fn refused_origin() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Not allowed",
        "This form was sent from another site.",
        "error",
    )
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PageForm {
    token: Option<String>,
    email: Option<String>,
    new_password: Option<String>,
}

fn hidden_token(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"token\" value=\"{}\">",
        escape_html(token)
    )
}

/// The verification link's page: one button, so that link scanners that
/// fetch the URL do not use the token up.
#[handler]
pub async fn verify_email_page(Query(q): Query<TokenQuery>) -> Response {
    match q.token.filter(|t| !t.is_empty()) {
        None => message(
            StatusCode::BAD_REQUEST,
            "Confirm your e-mail address",
            "This link has no token.",
            "error",
        ),
        Some(token) => page(
            StatusCode::OK,
            "Confirm your e-mail address",
            &format!(
                "<form method=\"post\" action=\"/verify-email\">{}\n<button type=\"submit\">Confirm my e-mail address</button></form>\n",
                hidden_token(&token)
            ),
        ),
    }
}

#[handler]
pub async fn verify_email_submit(
    req: &Request,
    Data(state): Data<&AppState>,
    Form(form): Form<PageForm>,
) -> Response {
    if foreign_origin(state, req) {
        return refused_origin();
    }
    let token = form.token.unwrap_or_default();
    match accounts::verify_email(state, &token, crate::now()).await {
        Ok(()) => message(
            StatusCode::OK,
            "E-mail address confirmed",
            "Thank you: you can now sign in.",
            "ok",
        ),
        Err(Error::Internal(e)) => failure_page("verify-email", &e),
        Err(_) => message(
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "This link is invalid, already used or expired. Ask for a new one from the app.",
            "error",
        ),
    }
}

fn reset_form(token: &str, error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" id=\"pw-error\">{}</p>\n", escape_html(e))
    });
    format!(
        "{error}<form method=\"post\" action=\"/reset-password\">{}\n\
         <label for=\"new_password\">New password</label>\n\
         <input id=\"new_password\" name=\"new_password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"8\" maxlength=\"128\">\n\
         <button type=\"submit\">Set my new password</button></form>\n",
        hidden_token(token)
    )
}

fn request_form() -> String {
    "<p>Enter the e-mail address of your account; we will send a link to choose a new password.</p>\n\
     <form method=\"post\" action=\"/reset-password\">\n\
     <label for=\"email\">E-mail address</label>\n\
     <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required>\n\
     <button type=\"submit\">Send me a link</button></form>\n"
        .to_owned()
}

/// The reset link's page: a new-password form; without a token, a form to
/// ask for a link.
#[handler]
pub async fn reset_password_page(Query(q): Query<TokenQuery>) -> Response {
    match q.token.filter(|t| !t.is_empty()) {
        Some(token) => page(StatusCode::OK, "Choose a new password", &reset_form(&token, None)),
        None => page(StatusCode::OK, "Reset your password", &request_form()),
    }
}

#[handler]
pub async fn reset_password_submit(
    req: &Request,
    Data(state): Data<&AppState>,
    Form(form): Form<PageForm>,
) -> Response {
    if foreign_origin(state, req) {
        return refused_origin();
    }
    let now = crate::now();
    if form.token.is_none() {
        return match accounts::request_password_reset(state, form.email, now).await {
            Ok(()) => message(
                StatusCode::OK,
                "Check your mail",
                "If an account uses this address, a link to choose a new password is on its way.",
                "ok",
            ),
            Err(Error::Problem(_)) => page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Reset your password",
                &format!(
                    "<p class=\"error\">Enter a valid e-mail address.</p>\n{}",
                    request_form()
                ),
            ),
            Err(Error::Internal(e)) => failure_page("reset-password", &e),
            Err(_) => message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Please try again later.",
                "error",
            ),
        };
    }
    let token = form.token.clone().unwrap_or_default();
    match accounts::confirm_password_reset(state, form.token, form.new_password, now).await {
        Ok(()) => message(
            StatusCode::OK,
            "Password changed",
            "Your new password is set, and every session was signed out. You can now sign in.",
            "ok",
        ),
        Err(Error::Problem(p)) if p.status == 422 => {
            let detail: Vec<String> = p.errors.iter().flatten().map(|f| f.message.clone()).collect();
            let text = format!("The password was not accepted: {}.", detail.join("; "));
            page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Choose a new password",
                &reset_form(&token, Some(&text)),
            )
        }
        Err(Error::Internal(e)) => failure_page("reset-password", &e),
        Err(_) => message(
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "This link is invalid, already used or expired. Ask for a new one.",
            "error",
        ),
    }
}
