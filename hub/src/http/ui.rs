//! The operator's page: the fleet, a cluster, the objects and the conflicts
//! in a browser, served from the hub's binary.
//!
//! The page is static: a single HTML document whose script reads the hub
//! API (`/api/v1/...`) every two seconds, so it shows nothing the API does
//! not, and asks nothing the API would not answer to the same user (the
//! page and the API sit behind the same [`super::auth`]; an operator grants
//! `/uplink-hub/ui/*` beside `/uplink-hub/api/v1/*`).
//!
//! Everything is compiled in (`hub/ui/`): hubs often run where no CDN is
//! reachable. The one library is uPlot (MIT, 50 KB, `hub/ui/vendor/`), for
//! the capacity plots; the rest is plain HTML, CSS and a script with no
//! build step. The Content-Security-Policy allows scripts, styles and
//! fetches from this origin only: data from clusters is only ever written
//! into the page as text.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::Body;

/// Where the page lives.
pub const PAGE_PATH: &str = "/ui/";

/// One file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: PAGE_PATH,
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/app.css"),
    },
    Asset {
        path: "/ui/vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/ui/vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.min.css"),
    },
];

/// Same-origin only; no inline script or style, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Answers `path` when it is part of the page (or `/`, which redirects to
/// it), else `None`.
pub(super) fn route(path: &str) -> Option<Response<Body>> {
    if path == "/" || path == "/ui" {
        return Some(redirect(PAGE_PATH));
    }
    let asset = ASSETS.iter().find(|asset| asset.path == path)?;
    Some(respond(asset))
}

fn respond(asset: &Asset) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body)).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Small and compiled in: always revalidate, so a new hub's page is
    // never mixed with an old script.
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
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::FOUND;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_leads_to_the_page() {
        for path in ["/", "/ui"] {
            let Some(response) = route(path) else {
                panic!("{path} is not routed");
            };
            assert_eq!(response.status(), StatusCode::FOUND);
            assert_eq!(response.headers()[header::LOCATION], PAGE_PATH);
        }
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        let Some(page) = ASSETS.iter().find(|a| a.path == PAGE_PATH) else {
            panic!("no page");
        };
        let html = String::from_utf8_lossy(page.body);
        // Every src= and href= the document loads from /ui/ is an asset.
        for quoted in html.split(['"', '\'']).filter(|s| s.starts_with("/ui/")) {
            assert!(route(quoted).is_some(), "{quoted} is named but not served");
        }
        for asset in ASSETS.iter().filter(|a| a.path != PAGE_PATH) {
            assert!(
                html.contains(asset.path),
                "{} is served but the page does not load it",
                asset.path
            );
        }
    }

    #[test]
    fn assets_carry_their_type_and_a_strict_policy() {
        let Some(script) = route("/ui/app.js") else {
            panic!("no script");
        };
        assert_eq!(script.status(), StatusCode::OK);
        assert!(
            script.headers()[header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/javascript"))
        );
        let policy = &script.headers()[header::CONTENT_SECURITY_POLICY];
        assert!(
            policy
                .to_str()
                .is_ok_and(|p| p.contains("script-src 'self'"))
        );
        assert!(route("/ui/nope.js").is_none());
    }
}
