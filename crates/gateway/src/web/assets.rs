//! The files the pages load, embedded in the binary from `web/` at the top of the repository.
//! Each is served under a name that carries its version, so browsers may keep it for a year and
//! a new build is fetched at once.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The stylesheet of every page.
pub const STYLE: &str = include_str!("../../../../web/shop.css");

/// Changes whenever [`STYLE`] does: the first 8 hex digits of its SHA-256.
pub static STYLE_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(STYLE.as_bytes())[..4]));

/// `GET /static/{file}`: an embedded file, cacheable for good; 404 for any other name.
pub async fn serve(Path(file): Path<String>) -> Response {
    if file != format!("shop.{}.css", *STYLE_VERSION) {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        ],
        STYLE,
    )
        .into_response()
}
