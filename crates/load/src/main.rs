//! `bookstore-load`: the load generator's executable; everything is in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    bookstore_load::cli::main().await
}
