//! The dashboard: one static page and its script and stylesheet, compiled into the binary.
//!
//! These routes need no token: the page asks for the admin token, keeps it in the tab's
//! `sessionStorage` and sends it with every API call (`?token=` for the event stream). The
//! page loads nothing from elsewhere, which its Content-Security-Policy also enforces.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const TIMED_JS: &str = include_str!("dashboard/timed.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Only this origin: no CDN, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `GET /`, `GET /assets/app.js` (and the module it imports), `GET /assets/style.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/timed.js",
            get(|| async { asset("text/javascript; charset=utf-8", TIMED_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated on every load, so a new version shows after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_references_only_its_own_assets() {
        for asset in ["assets/app.js", "assets/style.css"] {
            assert!(
                INDEX_HTML.contains(asset),
                "index.html does not load {asset}"
            );
        }
        assert!(
            APP_JS.contains("from './timed.js'"),
            "app.js does not import timed.js"
        );
        for text in [INDEX_HTML, APP_JS, TIMED_JS, STYLE_CSS] {
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
                "the dashboard must load nothing from elsewhere"
            );
        }
    }

    #[test]
    fn script_inserts_data_as_text_only() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            for (name, script) in [("app.js", APP_JS), ("timed.js", TIMED_JS)] {
                assert!(!script.contains(sink), "{name} uses {sink}");
            }
        }
    }
}
