//! The dashboard: a fleet overview at `/` and `/ui/`, and a page per GPU at `/ui/gpu.html`. The
//! pages are hand-written HTML, CSS and JavaScript from `ui/assets/`, compiled into the binary
//! with `include_bytes!`, so the dashboard works offline and needs no build step of its own;
//! the scripts read the JSON API from the browser and draw their charts as SVG.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin (no inline script
//! or style), and an ETag computed at compile time, so a browser revalidates instead of
//! downloading the assets again.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

/// Only this origin's scripts, styles, images and API; nothing inline, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One file of the dashboard.
struct Asset {
    name: &'static str,
    body: &'static [u8],
    /// FNV-1a of the body: the ETag.
    hash: u64,
}

/// FNV-1a, 64 bits: enough to tell two versions of a file apart, and computable in a const.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($name:literal) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!("../ui/assets/", $name)),
            hash: fnv1a(include_bytes!(concat!("../ui/assets/", $name))),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("index.html"),
    asset!("gpu.html"),
    asset!("dashboard.css"),
    asset!("theme.js"),
    asset!("common.js"),
    asset!("chart.js"),
    asset!("overview.js"),
    asset!("gpu.js"),
    asset!("favicon.svg"),
];

/// The media type of a file, by extension (module scripts need a JavaScript type).
fn content_type(name: &str) -> Option<&'static str> {
    match name.rsplit_once('.')?.1 {
        "html" => Some("text/html; charset=utf-8"),
        "js" => Some("text/javascript; charset=utf-8"),
        "css" => Some("text/css; charset=utf-8"),
        "svg" => Some("image/svg+xml"),
        _ => None,
    }
}

/// The dashboard's routes: `/` and `/ui/` (the overview), `/ui` (redirected to `/ui/`) and the
/// files under `/ui/`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/{file}", get(file))
}

async fn overview(headers: HeaderMap) -> Response {
    serve(
        find("index.html").expect("the overview is compiled in"),
        &headers,
    )
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match find(&name) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::RouteNotFound(format!(
            "/ui/{}",
            name.chars().take(200).collect::<String>()
        ))
        .into_response(),
    }
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// The asset, or 304 when the browser already holds this version.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    content_type(asset.name).unwrap_or("application/octet-stream"),
                ),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    );
    // Revalidate on every load: a new gateway version serves new assets under the same names.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_names_are_unique_and_typed() {
        for (i, asset) in ASSETS.iter().enumerate() {
            assert!(
                ASSETS[..i].iter().all(|other| other.name != asset.name),
                "{} is listed twice",
                asset.name
            );
            assert!(content_type(asset.name).is_some(), "{}", asset.name);
            assert!(!asset.body.is_empty(), "{}", asset.name);
        }
    }

    /// Every `/ui/...` file a page links and every module a script imports is compiled in.
    #[test]
    fn every_referenced_file_is_served() {
        let mut referenced = Vec::new();
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).expect("text asset");
            for marker in ["\"/ui/", "from './"] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let end = rest.find(['"', '\'', '?']).expect("a quoted name");
                    referenced.push((asset.name, rest[..end].to_string()));
                }
            }
        }
        assert!(referenced.len() > 10, "{referenced:?}");
        for (page, name) in referenced {
            assert!(
                name.is_empty() || find(&name).is_some(),
                "{page} refers to {name}, which is not served"
            );
        }
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
