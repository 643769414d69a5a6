//! `/api/v1/books/{id}/recommendations` and `/api/v1/users/me/recommendations`: what to read
//! next, from the recommendations service, which must never break a page.
//!
//! Each call has a budget of its own (`recommendations_budget_ms`), well under the request's.
//! A book's recommendations are the same for every caller, so the gateway keeps the JSON it
//! sent for `recommendations_edge_cache_ms` (1 s): a popular page costs one call a second.
//! When recommendations is down, slow, or failing, the answer is still 200: the best-sellers
//! the gateway last heard (asked for with the first good answer, then again in the background
//! at most once a minute while recommendations answers), or an empty list, marked
//! `X-Degraded: fallback`. What is the caller's doing (a bad limit, an unknown book, no token)
//! is still their error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use bookstore_api::recommendations::v1 as pb;
use bookstore_platform::grpc::Deadline;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Auth;
use crate::books::Book;
use crate::error::{ApiError, ErrorBody, Json, Path, Query};
use crate::stale::DEGRADED;

/// A book to read next, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recommendation {
    pub book: Book,
    /// `bought_together`, `best_seller` or `catalog`.
    #[schema(example = "bought_together")]
    pub reason: String,
    /// For `bought_together`, orders with both books in one basket (summed over your books for
    /// yours); for `best_seller`, units sold in the last 30 days; 0 for `catalog`.
    pub score: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recommendations {
    pub items: Vec<Recommendation>,
}

impl From<pb::Recommendations> for Recommendations {
    fn from(r: pb::Recommendations) -> Self {
        let items = r
            .items
            .into_iter()
            .filter_map(|i| Some(Recommendation { book: i.book?.into(), reason: i.reason, score: i.score }))
            .collect();
        Self { items }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LimitQuery {
    /// 1 to 50 (default 10).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i32>,
}

impl LimitQuery {
    fn parse(&self) -> Result<i32, ApiError> {
        match self.limit {
            None => Ok(10),
            Some(n @ 1..=50) => Ok(n),
            Some(_) => Err(ApiError::invalid("limit: between 1 and 50")),
        }
    }
}

/// The budget of a recommendations call, unless `recommendations_budget_ms` says otherwise.
pub const BUDGET: Duration = Duration::from_millis(500);
/// How often, at most, the best-sellers kept for the fallback are asked for again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// How many best-sellers are kept for the fallback.
const KEPT: i32 = 50;

/// The best-sellers kept for when recommendations cannot answer, and a book's answers as sent.
pub struct Fallback {
    budget: Duration,
    best_sellers: Mutex<(Option<Instant>, Arc<Vec<Recommendation>>)>,
    /// A book's recommendations are the same for every caller: the JSON sent, by book and
    /// limit, kept `recommendations_edge_cache_ms` (none when zero).
    pages: Option<moka::sync::Cache<(String, i32), axum::body::Bytes>>,
}

/// How many books' answers the gateway keeps at most.
const KEPT_PAGES: u64 = 10_000;

impl Fallback {
    pub fn new(budget: Duration, keep_pages: Duration) -> Self {
        let pages = (!keep_pages.is_zero())
            .then(|| moka::sync::Cache::builder().max_capacity(KEPT_PAGES).time_to_live(keep_pages).build());
        Self { budget, best_sellers: Mutex::new((None, Arc::default())), pages }
    }

    /// The kept best-sellers, `exclude` left out, at most `limit`.
    fn serve(&self, limit: i32, exclude: Option<&str>) -> Response {
        let kept = self.best_sellers.lock().expect("best-sellers lock").1.clone();
        let items = kept
            .iter()
            .filter(|r| Some(r.book.id.as_str()) != exclude)
            .take(limit as usize)
            .cloned()
            .collect();
        let mut response = Json(Recommendations { items }).into_response();
        response.headers_mut().insert(DEGRADED, HeaderValue::from_static("fallback"));
        response
    }

    /// Whether it is time to ask for the best-sellers again (and, if so, marks the asking):
    /// `Some(true)` the first time, when there are none to fall back on yet.
    fn due(&self) -> Option<bool> {
        let mut kept = self.best_sellers.lock().expect("best-sellers lock");
        match kept.0 {
            Some(at) if at.elapsed() < REFRESH_EVERY => None,
            asked => {
                kept.0 = Some(Instant::now());
                Some(asked.is_none())
            }
        }
    }
}

/// Calls recommendations within the budget; the answer, or the fallback when recommendations
/// could not give one.
async fn answer<F, Fut>(
    state: &AppState,
    limit: i32,
    exclude: Option<&str>,
    page: Option<(String, i32)>,
    call: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Deadline) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::Recommendations>, tonic::Status>>,
{
    let fallback = &state.recommendations_fallback;
    let deadline = Deadline::after(fallback.budget.min(state.request_timeout));
    let answer = tokio::time::timeout(fallback.budget, call(deadline)).await;
    match answer {
        Ok(Ok(found)) => {
            refresh(state).await;
            let found = Recommendations::from(found.into_inner());
            match (page, &fallback.pages) {
                (Some(key), Some(pages)) => {
                    let json = axum::body::Bytes::from(serde_json::to_vec(&found).map_err(|e| {
                        tracing::error!(error = %e, "encoding recommendations");
                        ApiError::new(
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            crate::error::ErrorCode::Internal,
                            "internal error",
                        )
                    })?);
                    pages.insert(key, json.clone());
                    Ok(json_bytes(json))
                }
                _ => Ok(Json(found).into_response()),
            }
        }
        Ok(Err(status))
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
            ) =>
        {
            Err(status.into())
        }
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "recommendations failed; answering the fallback");
            Ok(fallback.serve(limit, exclude))
        }
        Err(_) => {
            tracing::warn!("recommendations took longer than their budget; answering the fallback");
            Ok(fallback.serve(limit, exclude))
        }
    }
}

/// An answer already encoded.
fn json_bytes(json: axum::body::Bytes) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Asks for the best-sellers when it is time: the first time before answering (so there is a
/// fallback from the first good answer on), later in the background.
async fn refresh(state: &AppState) {
    let Some(first) = state.recommendations_fallback.due() else { return };
    let asking = {
        let state = state.clone();
        async move {
            let fallback = &state.recommendations_fallback;
            let request = Deadline::after(fallback.budget).request(pb::BestSellersRequest { limit: KEPT });
            match state.recommendations.clone().best_sellers(request).await {
                Ok(found) => {
                    let items = Recommendations::from(found.into_inner()).items;
                    fallback.best_sellers.lock().expect("best-sellers lock").1 = Arc::new(items);
                }
                Err(status) => tracing::debug!(code = ?status.code(), "refreshing the best-sellers failed"),
            }
        }
    };
    if first {
        asking.await;
    } else {
        tokio::spawn(asking);
    }
}

/// Books bought with this one, best first, filled up with best-sellers and then the catalog;
/// out-of-stock books left out. Never a 5xx: when recommendations cannot answer, the last
/// best-sellers heard (or nothing), marked `X-Degraded: fallback`.
#[utoipa::path(get, path = "/api/v1/books/{id}/recommendations", tag = "recommendations",
    params(("id" = String, Path, description = "Book id"), LimitQuery),
    responses(
        (status = 200, body = Recommendations, headers(("x-degraded" = String, description = "`fallback` when recommendations could not answer"))),
        (status = 400, body = ErrorBody), (status = 404, description = "No such book", body = ErrorBody)))]
pub async fn book_recommendations(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(query): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    let limit = query.parse()?;
    let key = (id.clone(), limit);
    if let Some(json) = state.recommendations_fallback.pages.as_ref().and_then(|pages| pages.get(&key)) {
        return Ok(json_bytes(json));
    }
    let message = pb::BoughtTogetherRequest { book_id: id.clone(), limit };
    let client = state.recommendations.clone();
    answer(&state, limit, Some(&id), Some(key), |deadline| {
        let mut request = deadline.request(message);
        auth.attach(&mut request);
        let mut client = client;
        async move { client.bought_together(request).await }
    })
    .await
}

/// For you: what is bought with what you bought, leaving out what you bought; filled up and
/// degraded as a book's recommendations are.
#[utoipa::path(get, path = "/api/v1/users/me/recommendations", tag = "recommendations", security(("bearer" = [])),
    params(LimitQuery),
    responses(
        (status = 200, body = Recommendations, headers(("x-degraded" = String, description = "`fallback` when recommendations could not answer"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn my_recommendations(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    auth.required()?;
    let limit = query.parse()?;
    let client = state.recommendations.clone();
    answer(&state, limit, None, None, |deadline| {
        let mut request = deadline.request(pb::ForMeRequest { limit });
        auth.attach(&mut request);
        let mut client = client;
        async move { client.for_me(request).await }
    })
    .await
}
