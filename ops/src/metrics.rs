//! The answer to `GET /metrics`: a registry in the Prometheus text
//! exposition format (version 0.0.4), the same for agent and hub.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use prometheus::{Encoder as _, Registry, TextEncoder};

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric in `registry`, as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail on I/O; a failure would mean an
    // invalid metric family, which `register` already refused. Render what
    // we can rather than nothing.
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(%error, "encoding metrics");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A `200 OK` carrying `rendered` (from [`encode`]) as Prometheus text.
pub fn response(rendered: String) -> Response<Full<Bytes>> {
    let mut response = crate::serve::text(StatusCode::OK, rendered);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics_with_the_prometheus_content_type() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("uplink_test_total", "a test counter")
            .unwrap_or_else(|e| panic!("constant name: {e}"));
        registry
            .register(Box::new(counter.clone()))
            .unwrap_or_else(|e| panic!("registered once: {e}"));
        counter.inc();
        let body = encode(&registry);
        assert!(body.contains("# TYPE uplink_test_total counter"), "{body}");
        assert!(body.contains("uplink_test_total 1"), "{body}");
        let answer = response(body);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
