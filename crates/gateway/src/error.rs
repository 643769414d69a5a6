//! The one error envelope of the REST API:
//! `{"code": "NOT_FOUND", "message": "...", "request_id": "..."}`.
//!
//! Handlers return [`ApiError`], which leaves its code and message in the response's extensions;
//! the [`envelope`] middleware, which knows the request id, writes the body. Errors that never
//! passed through a handler (unknown route, wrong method, a body over the limit, a panic) get the
//! same envelope there too, so no client ever sees a bare error page.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

/// Every code the API answers with, as the envelope's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A field is missing or malformed (400; `details` lists the fields).
    InvalidArgument,
    /// A request the API cannot read at all (400).
    BadRequest,
    /// Not signed in, or the token is not valid (401).
    Unauthenticated,
    /// Signed in, but not allowed (403).
    PermissionDenied,
    /// No such resource, or not yours (404).
    NotFound,
    /// The method is not defined on this resource (405).
    MethodNotAllowed,
    /// Taken already, e.g. an ISBN or a username (409).
    AlreadyExists,
    /// The resource is not in a state that allows it, e.g. out of stock (409; `details` lists
    /// the basket lines).
    FailedPrecondition,
    /// The body is larger than the limit (413).
    PayloadTooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// Understood but refused, e.g. an idempotency key reused with another body (422).
    Unprocessable,
    /// Too many requests; see `Retry-After` (429).
    ResourceExhausted,
    /// Something failed on our side (500).
    Internal,
    /// A service behind the gateway is not answering (503).
    Unavailable,
    /// A service behind the gateway took too long (504, or 408 for a slow client).
    DeadlineExceeded,
}

/// What every error response carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Structured detail for some errors (e.g. the basket lines that were out of stock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// A stable, machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    #[schema(example = "no book with id 0190b6a2-...")]
    pub message: String,
    /// The `x-request-id` of the request, to quote when asking for help.
    pub request_id: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds a throttled client should wait (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None, details: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// The envelope for a status that no handler described (a layer's or the router's own).
    fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => {
                (ErrorCode::MethodNotAllowed, "method not allowed on this resource")
            }
            StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body is too large"),
            StatusCode::REQUEST_TIMEOUT => (ErrorCode::DeadlineExceeded, "request took too long"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (ErrorCode::UnsupportedMediaType, "the body must be JSON (Content-Type: application/json)")
            }
            StatusCode::TOO_MANY_REQUESTS => (ErrorCode::ResourceExhausted, "too many requests"),
            StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "service unavailable"),
            s if s.is_client_error() => (ErrorCode::BadRequest, "bad request"),
            _ => (ErrorCode::Internal, "internal error"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// gRPC statuses from the services, mapped to HTTP. Internal details never reach the client:
/// the service has logged them.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use bookstore_platform::status::{reason, shortfalls};
        use tonic_types::StatusExt;
        let message = status.message().to_owned();
        let details = status.get_error_details();
        if details.error_info().is_some_and(|info| info.reason == reason::IDEMPOTENCY_KEY_REUSED) {
            return Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable, message);
        }
        let mut error = Self::from_code(&status, message);
        let lines = shortfalls(&status);
        if !lines.is_empty() {
            error.details = serde_json::to_value(lines).ok();
        } else if let Some(bad_request) = details.bad_request() {
            let fields: Vec<serde_json::Value> = bad_request
                .field_violations
                .iter()
                .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
                .collect();
            error.details = Some(serde_json::Value::Array(fields));
        }
        if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
            error.retry_after = Some(delay.as_secs().max(1));
        }
        error
    }
}

impl ApiError {
    fn from_code(status: &tonic::Status, message: String) -> Self {
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => {
                Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message)
            }
            Code::NotFound => Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message),
            Code::AlreadyExists => Self::new(StatusCode::CONFLICT, ErrorCode::AlreadyExists, message),
            Code::FailedPrecondition | Code::Aborted => {
                Self::new(StatusCode::CONFLICT, ErrorCode::FailedPrecondition, message)
            }
            Code::Unauthenticated => Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, message),
            Code::PermissionDenied => Self::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, message),
            Code::ResourceExhausted => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::ResourceExhausted, message)
            }
            Code::DeadlineExceeded | Code::Cancelled => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::DeadlineExceeded,
                "an upstream service took too long",
            ),
            Code::Unavailable => {
                tracing::warn!(error = %message, "upstream unavailable");
                // Fail fast and say when to come back: about when a breaker tries again.
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        "an upstream service is unavailable",
                    )
                }
            }
            _ => {
                tracing::error!(code = ?status.code(), error = %message, "upstream failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
            }
        }
    }
}

/// A body, query string or path the handler could not read: the client gets words of ours (and
/// the field at fault, when known); serde's own (Rust types, parser positions) go to the log.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        tracing::info!(%status, detail = %rejection.body_text(), "refused a request body");
        match &rejection {
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                match find::<serde_path_to_error::Error<serde_json::Error>>(&rejection) {
                    Some(err) if err.inner().classify() == serde_json::error::Category::Data => {
                        Self::invalid(
                            field_message("field", &err.path().to_string(), &err.inner().to_string())
                                .unwrap_or_else(|| {
                                    "the body is not the JSON object this operation takes".into()
                                }),
                        )
                    }
                    _ => Self::invalid("the body is not valid JSON"),
                }
            }
            // A body that did not arrive in time is the client's slowness.
            _ if find::<crate::security::BodyTooSlow>(&rejection).is_some() => {
                Self::for_status(StatusCode::REQUEST_TIMEOUT)
            }
            _ => Self::for_status(status),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        tracing::info!(detail = %rejection.body_text(), "refused a query string");
        let field = find::<serde_path_to_error::Error<serde::de::value::Error>>(&rejection).and_then(|err| {
            field_message("query parameter", &err.path().to_string(), &err.inner().to_string())
        });
        Self::invalid(field.unwrap_or_else(|| "the query string is not valid".into()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        tracing::info!(detail = %rejection.body_text(), "refused a path");
        Self::invalid("the path is not valid")
    }
}

/// The first error of type `E` in `error`'s chain of sources.
fn find<'a, E: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// What is wrong with a field, in our words, from where serde was (`path`, as
/// `serde_path_to_error` prints it) and what it said; `None` when no field can be named.
/// Names that are not plain (the client's own keys may be anything) are not repeated.
fn field_message(noun: &str, path: &str, serde_said: &str) -> Option<String> {
    // A named field first (not `[0]`, a body that is an array), then plain characters.
    let plain = |name: &str| {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.len() <= 100
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
    };
    let quoted =
        |prefix: &str| serde_said.strip_prefix(prefix).and_then(|r| r.split_once('`')).map(|(f, _)| f);
    let within = |field: &str| match path {
        "." | "" => field.to_owned(),
        _ if path == field || path.ends_with(&format!(".{field}")) => path.to_owned(),
        _ => format!("{path}.{field}"),
    };
    if let Some(field) = quoted("missing field `") {
        let name = within(field);
        return plain(&name).then(|| format!("{noun} `{name}` is missing"));
    }
    if let Some(field) = quoted("unknown field `") {
        let name = within(field);
        return plain(&name).then(|| format!("{noun} `{name}` is not one this operation takes"));
    }
    (path != "." && plain(path)).then(|| format!("{noun} `{path}` has the wrong type or value"))
}

/// An integer field of a request body. JSON Schema counts `2.0` as an integer, and so does the
/// API: an integer-valued number is taken (within `T`'s range); anything else is refused.
pub fn integral<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number.as_i64().or_else(|| {
        // i64's range, as floats: -2^63 is in it, 2^63 the first past it.
        let (min, past) = (i64::MIN as f64, -(i64::MIN as f64));
        number.as_f64().filter(|f| f.fract() == 0.0 && *f >= min && *f < past).map(|f| f as i64)
    });
    let whole = whole.ok_or_else(|| D::Error::custom("not an integer"))?;
    T::try_from(whole).map_err(|_| D::Error::custom("out of range"))
}

/// A listing's `page` and `limit` as the API documents them (page 1 to 10,000, limit 1 to 100;
/// absent: 1 and 20), refused in the envelope otherwise: the services read `0` as "the
/// default", which a client must not be able to send.
pub fn paging(page: Option<i32>, limit: Option<i32>) -> Result<(i32, i32), ApiError> {
    use bookstore_platform::page::PageRequest;
    let (max_page, max_limit) = (PageRequest::MAX_PAGE as i32, PageRequest::MAX_LIMIT as i32);
    let page = page.unwrap_or(1);
    if !(1..=max_page).contains(&page) {
        return Err(ApiError::invalid(format!("page: must be between 1 and {max_page}")));
    }
    let limit = limit.unwrap_or(PageRequest::DEFAULT_LIMIT as i32);
    if !(1..=max_limit).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: must be between 1 and {max_limit}")));
    }
    Ok((page, limit))
}

/// `axum::Json`, with rejections in the envelope.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with rejections in the envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, with rejections in the envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Marks an error a page rendered itself (as HTML, for a person): the envelope leaves it alone.
#[derive(Debug, Clone, Copy)]
pub struct Rendered;

/// Writes the envelope of every error response, with the request's id.
pub async fn envelope(request: Request, next: Next) -> Response {
    let request_id =
        request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    finish(request_id, next.run(request).await).await
}

/// Writes the envelope on `response` when it is an error of the gateway's own (not one passed
/// through from a route's backend), naming `request_id`.
pub async fn finish(request_id: String, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<crate::proxy::PassedThrough>().is_some()
        || response.extensions().get::<Rendered>().is_some()
    {
        return response;
    }
    let error = match response.extensions().get::<ApiError>() {
        Some(error) => error.clone(),
        // Some other layer already wrote a JSON error (none does today); leave it.
        None if response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json")) =>
        {
            return response;
        }
        None => ApiError::for_status(status),
    };
    let described = response.extensions().get::<ApiError>().is_some();
    let (mut parts, body) = response.into_parts();
    if status.is_server_error() {
        // An error no handler described (an extractor's rejection, a layer's): keep its text
        // for the log, since the client only gets the envelope.
        let detail = if described {
            String::new()
        } else {
            axum::body::to_bytes(body, 4096)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        tracing::warn!(%status, code = ?error.code, request_id, detail, "request failed");
    }
    let retry_after = error.retry_after;
    let body = ErrorBody { code: error.code, message: error.message, request_id, details: error.details };
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = retry_after {
        parts.headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Price {
        amount_minor: i64,
        currency: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct CreateThing {
        title: String,
        price: Price,
    }

    async fn refusal(body: &str) -> ApiError {
        let request = axum::http::Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let rejection =
            <axum::Json<CreateThing> as FromRequest<()>>::from_request(request, &()).await.unwrap_err();
        ApiError::from(rejection)
    }

    const SERDE_WORDS: &[&str] =
        &["expected", "struct", "line ", "column", "invalid type", "i64", "CreateThing"];

    fn assert_our_words(message: &str) {
        for word in SERDE_WORDS {
            assert!(!message.contains(word), "{message:?} contains {word:?}");
        }
    }

    #[test]
    fn an_integer_field_takes_an_integer_valued_number_and_nothing_else() {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "integral")]
            n: i32,
        }
        let n = |json: &str| serde_json::from_str::<Body>(json).map(|b| b.n);
        assert_eq!(n(r#"{"n": 54918}"#).unwrap(), 54918);
        assert_eq!(n(r#"{"n": 54918.0}"#).unwrap(), 54918, "JSON Schema's integer");
        assert_eq!(n(r#"{"n": -2.0e3}"#).unwrap(), -2000);
        for refused in [r#"{"n": 1.5}"#, r#"{"n": 1e19}"#, r#"{"n": 3000000000}"#, r#"{"n": "7"}"#] {
            assert!(n(refused).is_err(), "{refused}");
        }
    }

    #[tokio::test]
    async fn a_body_refusal_names_the_field_in_our_words_not_serdes() {
        let cases = [
            (
                r#"{"title": "t", "price": {"amount_minor": "x", "currency": "EUR"}}"#,
                "field `price.amount_minor` has the wrong type or value",
            ),
            (r#"{"title": "t"}"#, "field `price` is missing"),
            (r#"{"title": "t", "price": {"currency": "EUR"}}"#, "field `price.amount_minor` is missing"),
            (
                r#"{"title": "t", "price": {"amount_minor": 1, "currency": "EUR", "x": 1}}"#,
                "field `price.x` is not one this operation takes",
            ),
            (r#"[1, 2]"#, "the body is not the JSON object this operation takes"),
            (r#"{"title": "#, "the body is not valid JSON"),
            (r#"{"title" 1}"#, "the body is not valid JSON"),
            (
                r#"{"title": "t", "price": {"amount_minor": 1, "currency": "EUR", "<script>": 1}}"#,
                "the body is not the JSON object this operation takes",
            ),
        ];
        for (body, expected) in cases {
            let error = refusal(body).await;
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error.message, expected, "{body}");
            assert_our_words(&error.message);
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Paging {
        page: Option<i32>,
    }

    #[test]
    fn a_query_refusal_names_the_parameter_in_our_words() {
        let uri: axum::http::Uri = "/x?page=abc".parse().unwrap();
        let rejection = axum::extract::Query::<Paging>::try_from_uri(&uri).unwrap_err();
        let error = ApiError::from(rejection);
        assert_eq!(error.message, "query parameter `page` has the wrong type or value");
        assert_our_words(&error.message);
    }
}
