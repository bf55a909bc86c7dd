//! Integration tests: each speaks HTTP to the real app on a real database
//! (SQLite by default, PostgreSQL when `GATEHOUSE_TEST_DATABASE_URL` is set).
//! One binary on purpose: every extra test file is another link step.

// The no-panic lints guard `src/`; a test's job is to panic on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod accounts;
mod admin;
mod attacks;
mod authorize;
mod browser;
mod cli;
mod cluster;
mod discovery;
mod errors;
mod faults;
mod fuzz;
mod interop;
mod keys;
mod limits;
mod mail;
mod oidc_client;
mod ops;
mod passwords;
mod session;
mod smtp_sink;
mod token;
mod tokens_checked;
