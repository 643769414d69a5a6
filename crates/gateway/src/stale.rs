//! Degrade, don't fail: the last good answer of each public read, served marked
//! `X-Degraded: stale` when its service cannot answer (unavailable, or over its time).
//!
//! Bounded (entries and age), kept per read and its parameters, and only for answers that are
//! the same for every caller.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use moka::sync::Cache;
use serde::Serialize;
use tonic::Code;

use crate::error::ApiError;

pub const DEGRADED: HeaderName = HeaderName::from_static("x-degraded");

/// Last good answers, as the JSON bytes sent.
#[derive(Clone)]
pub struct StaleCache {
    answers: Cache<String, Bytes>,
}

impl StaleCache {
    pub fn new(capacity: u64, keep: Duration) -> Self {
        Self { answers: Cache::builder().max_capacity(capacity).time_to_live(keep).build() }
    }

    /// `answer` as JSON, remembered under `key`; or, when the service could not answer, the
    /// last one remembered under `key`, marked stale; or the error.
    pub fn serve<T: Serialize>(
        &self,
        key: String,
        answer: Result<T, tonic::Status>,
    ) -> Result<Response, ApiError> {
        match answer {
            Ok(value) => {
                // Encoded once, for the answer and the memory. Most reads repeat the answer
                // remembered: that one is kept rather than written again (a write costs the
                // cache more than a look).
                let bytes = match serde_json::to_vec(&value) {
                    Ok(bytes) => Bytes::from(bytes),
                    Err(_) => return Ok(Json(value).into_response()),
                };
                if self.answers.get(&key).as_ref() != Some(&bytes) {
                    self.answers.insert(key, bytes.clone());
                }
                Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
                    .into_response())
            }
            Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                match self.answers.get(&key) {
                    Some(bytes) => {
                        tracing::warn!(key, code = ?status.code(), "serving a stale answer");
                        metrics::counter!("http_server_degraded_total", "service" => crate::SERVICE, "how" => "stale")
                            .increment(1);
                        Ok((
                            [
                                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                                (DEGRADED, HeaderValue::from_static("stale")),
                            ],
                            bytes,
                        )
                            .into_response())
                    }
                    None => Err(status.into()),
                }
            }
            Err(status) => Err(status.into()),
        }
    }
}
