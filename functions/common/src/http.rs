//! The HTTP vocabulary that request metrics ([`crate::metrics::track`]) and server spans
//! ([`crate::telemetry::server_span`]) share, bounded by construction so that no request can
//! create a new series or span name: a method outside the known ones is `_OTHER` (OpenTelemetry's
//! HTTP conventions), a request no route matched has the one route [`UNMATCHED_ROUTE`], and the
//! route is always a route template written in code, never the request's path.

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
};

/// Where every function serves its metrics.
pub const METRICS_PATH: &str = "/metrics";
/// The label of a method that is not one of [`method_label`]'s known methods.
pub const OTHER_METHOD: &str = "_OTHER";
/// The route label of a request that no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The platform's probes (`/health/readiness`, `/health/liveness`) and `/metrics`: answered, but
/// neither counted as requests nor traced. The one place this rule lives.
pub fn is_probe(path: &str) -> bool {
    path.starts_with("/health/") || path == METRICS_PATH
}

/// `http.request.method` as OpenTelemetry defines it: the methods of RFC 9110 and PATCH (RFC
/// 5789) by name, any other as [`OTHER_METHOD`].
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// The matched route template (`/input`, `/weather.v1.Producer/Publish`), else
/// [`UNMATCHED_ROUTE`].
pub fn route_label(request: &Request) -> &str {
    request.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, |p| p.as_str())
}

/// The server span's name: `{method} {route}` (OpenTelemetry: `HTTP` stands for an unknown
/// method, and an unmatched request is named by its method alone). Written only when a layer
/// records it: without an exporter and with logs above `info`, nothing does.
pub fn span_name(request: &Request) -> SpanName<'_> {
    let method = match method_label(request.method()) {
        OTHER_METHOD => "HTTP",
        known => known,
    };
    SpanName { method, route: request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) }
}

/// See [`span_name`].
pub struct SpanName<'a> {
    method: &'static str,
    route: Option<&'a str>,
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.route {
            Some(route) => write!(f, "{} {route}", self.method),
            None => f.write_str(self.method),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn known_methods_keep_their_name_and_others_share_one_label() {
        for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), m);
        }
        for m in ["M1", "get", "PROPFIND", "QUERYX", "X".repeat(200).as_str()] {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), OTHER_METHOD, "{m}");
        }
    }

    #[test]
    fn an_unrouted_request_has_the_fixed_route_and_a_name_without_its_path() {
        let request = Request::builder().method("M7").uri("/x/12345?q=1").body(Body::empty()).unwrap();
        assert_eq!(route_label(&request), UNMATCHED_ROUTE);
        assert_eq!(span_name(&request).to_string(), "HTTP");
        let request = Request::builder().method("POST").uri("/anything").body(Body::empty()).unwrap();
        assert_eq!(span_name(&request).to_string(), "POST");
    }

    #[tokio::test]
    async fn a_routed_request_is_named_by_its_route_template() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route("/x/{id}", axum::routing::post(|r: Request| async move { span_name(&r).to_string() }));
        let request = Request::builder().method("POST").uri("/x/12345").body(Body::empty()).unwrap();
        let body = app.oneshot(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"POST /x/{id}");
    }

    #[test]
    fn probes_and_metrics_are_one_rule() {
        for path in ["/health/readiness", "/health/liveness", "/metrics"] {
            assert!(is_probe(path), "{path}");
        }
        for path in ["/", "/input", "/metrics/", "/healthz", "/health"] {
            assert!(!is_probe(path), "{path}");
        }
    }
}
