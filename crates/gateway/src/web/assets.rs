//! The files the pages load, embedded in the binary from `web/` at the top of the repository:
//! the stylesheet and two small scripts (plain JavaScript modules, no build step). Each is
//! served under a name that carries a hash of its content, so browsers may keep it for a year
//! and a new build's is fetched at once.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file: its name (`shop.css`), its content and its type.
pub struct Asset {
    pub name: &'static str,
    pub content: &'static str,
    pub content_type: &'static str,
}

pub const STYLE: Asset =
    Asset { name: "shop.css", content: include_str!("../../../../web/shop.css"), content_type: "text/css" };
/// The live fulfillment queue of the staff page.
pub const QUEUE: Asset = Asset {
    name: "queue.js",
    content: include_str!("../../../../web/queue.js"),
    content_type: "text/javascript",
};
/// Live status on "my orders".
pub const ORDERS: Asset = Asset {
    name: "orders.js",
    content: include_str!("../../../../web/orders.js"),
    content_type: "text/javascript",
};

const ALL: [&Asset; 3] = [&STYLE, &QUEUE, &ORDERS];

/// Each asset's versioned name (`shop.1a2b3c4d.css`: the first 8 hex digits of its SHA-256).
static VERSIONED: LazyLock<Vec<(String, &'static Asset)>> = LazyLock::new(|| {
    ALL.iter()
        .map(|asset| {
            let hash = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(asset.content.as_bytes())[..4]);
            let (stem, ext) = asset.name.rsplit_once('.').expect("a name with an extension");
            (format!("{stem}.{hash}.{ext}"), *asset)
        })
        .collect()
});

impl Asset {
    /// Where a page links to it.
    pub fn url(&self) -> String {
        let versioned = VERSIONED.iter().find(|(_, a)| a.name == self.name).map(|(v, _)| v.as_str());
        format!("/static/{}", versioned.unwrap_or(self.name))
    }
}

/// `GET /static/{file}`: an embedded file by its versioned name, cacheable for good; 404 for
/// any other name.
pub async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, asset)) = VERSIONED.iter().find(|(name, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let content_type = format!("{}; charset=utf-8", asset.content_type);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_str(&content_type).expect("a type is a header value")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        ],
        asset.content,
    )
        .into_response()
}
