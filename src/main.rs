//! The `gatehouse` binary: parse the command line and hand off to the library.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    gatehouse::cli::main().await
}
