//! Compiles `proto/` with protox, a protobuf compiler written in Rust, so that a fresh machine
//! needs no system `protoc` to build bookstore.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "bookstore/books/v1/books.proto",
        "bookstore/users/v1/users.proto",
        "bookstore/orders/v1/orders.proto",
        "bookstore/fulfillment/v1/fulfillment.proto",
        "bookstore/recommendations/v1/recommendations.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
