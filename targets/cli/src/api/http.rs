//! `/metrics` and `/health` over HTTP/1.1 on the client URL, as etcd serves them beside its
//! gRPC API: the member's metrics under etcd's names in Prometheus' text format, and etcd 3.4's
//! health check (`{"health":"true"}` with 200, `{"health":"false"}` and a newline with 503).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use tokio::net::TcpStream;

use super::Member;

/// The content type Prometheus' Go client gives the text format (etcd's `/metrics`).
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What Go's `http.Error` and etcd's health handler answer with.
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(member: Member, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path != "/metrics" && path != "/health" {
        return Ok(response(StatusCode::NOT_FOUND, TEXT_TYPE, "404 page not found\n".into()));
    }
    if request.method() != Method::GET {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT_TYPE, "Method Not Allowed\n".into());
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(r);
    }
    if path == "/metrics" {
        return Ok(response(StatusCode::OK, METRICS_TYPE, member.client.metrics().text()));
    }
    Ok(match member.client.health().await {
        Ok(()) => response(StatusCode::OK, TEXT_TYPE, r#"{"health":"true"}"#.into()),
        Err(why) => {
            log::warn!("/health error: {why}");
            // etcd answers it with Go's `http.Error`, which ends the body with a newline.
            response(StatusCode::SERVICE_UNAVAILABLE, TEXT_TYPE, "{\"health\":\"false\"}\n".into())
        }
    })
}

/// Serves one HTTP/1.1 connection.
pub(super) async fn serve(stream: TcpStream, member: Member) {
    let service = hyper::service::service_fn(move |request| handle(member.clone(), request));
    let io = hyper_util::rt::TokioIo::new(stream);
    // A client that goes away or speaks bad HTTP ends its own connection only.
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}
