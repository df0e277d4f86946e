//! The dashboard's routes: the pages and their assets served from the binary, with their security
//! and caching headers, and no etcd needed. The browser test of the pages themselves is
//! `scripts/ui-test.sh` (`make ui-test`).

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;

fn asset_file(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ui/assets")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn header_of(reply: &Reply, name: header::HeaderName) -> &str {
    reply
        .headers
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_pages_and_their_assets_are_served_from_the_binary() {
    let router = unconnected_router();
    let overview = asset_file("index.html");
    for path in ["/", "/ui/"] {
        let reply = get(&router, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.content_type(), "text/html; charset=utf-8", "{path}");
        assert_eq!(reply.body, overview, "{path}");
        let policy = header_of(&reply, header::CONTENT_SECURITY_POLICY);
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(header_of(&reply, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header_of(&reply, header::CACHE_CONTROL), "no-cache");
    }
    let redirect = get(&router, "/ui").await;
    assert_eq!(redirect.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header_of(&redirect, header::LOCATION), "/ui/");

    for (name, content_type) in [
        ("gpu.html", "text/html; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("theme.js", "text/javascript; charset=utf-8"),
        ("common.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("overview.js", "text/javascript; charset=utf-8"),
        ("gpu.js", "text/javascript; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let reply = get(&router, &format!("/ui/{name}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        assert_eq!(reply.content_type(), content_type, "{name}");
        assert_eq!(reply.body, asset_file(name), "{name}");
    }

    // Nothing is read from disk: a name outside the table is a 404, whatever it spells.
    for path in [
        "/ui/missing.js",
        "/ui/..%2F..%2FCargo.toml",
        "/ui/index.html%00",
    ] {
        assert_eq!(get(&router, path).await.problem(404), "not-found", "{path}");
    }
}

#[tokio::test]
async fn a_browser_holding_the_current_version_gets_304() {
    let router = unconnected_router();
    let first = get(&router, "/ui/chart.js").await;
    let etag = header_of(&first, header::ETAG).to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let revalidate = |tag: String| {
        Request::get("/ui/chart.js")
            .header(header::IF_NONE_MATCH, tag)
            .body(Body::empty())
            .unwrap()
    };
    let same = send(&router, revalidate(etag.clone())).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(header_of(&same, header::ETAG), etag);
    let listed = send(&router, revalidate(format!("\"0\", {etag}"))).await;
    assert_eq!(listed.status, StatusCode::NOT_MODIFIED);
    let other = send(&router, revalidate("\"0\"".into())).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, first.body);
    // Each file has its own tag.
    let overview = get(&router, "/ui/overview.js").await;
    assert_ne!(header_of(&overview, header::ETAG), etag);
}

#[tokio::test]
async fn the_pages_hold_no_inline_script_or_style() {
    for page in ["index.html", "gpu.html"] {
        let html = String::from_utf8(asset_file(page)).unwrap();
        let scripts = html.matches("<script").count();
        assert_eq!(scripts, 2, "{page}: the theme and the page script");
        assert_eq!(
            html.matches("<script src=\"/ui/").count()
                + html.matches("<script type=\"module\" src=\"/ui/").count(),
            scripts,
            "{page}: every script is a file"
        );
        for inline in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
            assert!(!html.contains(inline), "{page} holds {inline}");
        }
    }
}
