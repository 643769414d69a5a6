//! An OTLP/gRPC receiver that counts the spans it is sent and keeps none: the collector end of
//! `bench/tracing.sh`, so the cost of exporting is measured without a collector's own.
//!
//! ```sh
//! cargo run --release -p bookstore-platform --example otlp-sink -- 127.0.0.1:4317
//! ```
//! It prints how many spans it has received, once a second.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".to_owned()).parse()?;
    let count = Arc::new(AtomicU64::new(0));
    let service = TraceServiceServer::new(Counter(Arc::clone(&count)));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            every.tick().await;
            println!("{}", count.load(Ordering::Relaxed));
        }
    });
    tonic::transport::Server::builder().add_service(service).serve(addr).await?;
    Ok(())
}
