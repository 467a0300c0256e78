//! The connection to the upstream API: a pooled HTTP/1.1 and HTTP/2 client
//! (HTTP/2 by ALPN over TLS), the mapping of a client's request target onto the
//! upstream origin, and the classification of upstream failures into 502 and 504.
//!
//! The client adds nothing to a request but the `host` it derives from the
//! upstream URL: no `accept`, no `user-agent`, no compression.

use std::error::Error as StdError;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::ProxyBody;
use crate::config::{Timeouts, Upstream};
use crate::error::ProxyError;

/// The connector: plain TCP or TLS, with the system's trusted roots.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled upstream client.
pub type UpstreamClient = Client<Connector, ProxyBody>;

/// Builds the upstream client. Trusted roots come from the system store (and
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`); without any, only a plain-HTTP upstream works.
pub fn client(upstream: &Upstream, timeouts: &Timeouts) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeouts.connect));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));

    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder,
        Err(e) if upstream.scheme == http::uri::Scheme::HTTPS => {
            return Err(format!(
                "no trusted root certificates for the https upstream: {e}"
            ));
        }
        Err(_) => {
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

/// The upstream URI for a client's request target: the upstream origin and base
/// path, then the client's path and query unchanged.
pub fn target(upstream: &Upstream, client_uri: &Uri) -> Result<Uri, ProxyError> {
    let path_and_query = client_uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let mut builder = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone());
    builder = if upstream.base_path.is_empty() {
        builder.path_and_query(path_and_query)
    } else {
        builder.path_and_query(format!("{}{}", upstream.base_path, path_and_query))
    };
    builder.build().map_err(|e| ProxyError::BadRequest {
        message: format!("request target cannot be forwarded: {e}"),
        code: "invalid_request_target",
    })
}

/// Turns a failed upstream call into the error the client gets.
pub fn classify(err: &hyper_util::client::legacy::Error, connect_timeout: Duration) -> ProxyError {
    let detail = chain(err);
    if err.is_connect() {
        if caused_by_timeout(err) {
            return ProxyError::UpstreamTimeout {
                detail: format!("no connection within {connect_timeout:?} ({detail})"),
            };
        }
        return ProxyError::UpstreamUnreachable { detail };
    }
    ProxyError::UpstreamUnreachable {
        detail: format!("the upstream connection failed before a response: {detail}"),
    }
}

fn caused_by_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The messages of an error and its sources, joined.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream;

    #[test]
    fn targets_keep_path_and_query_under_the_base_path() {
        let plain = parse_upstream("https://api.openai.com").unwrap();
        let uri: Uri = "/v1/models?limit=2".parse().unwrap();
        assert_eq!(
            target(&plain, &uri).unwrap().to_string(),
            "https://api.openai.com/v1/models?limit=2"
        );
        let based = parse_upstream("http://127.0.0.1:9000/openai/").unwrap();
        assert_eq!(
            target(&based, &uri).unwrap().to_string(),
            "http://127.0.0.1:9000/openai/v1/models?limit=2"
        );
        // An absolute-form target keeps only its path: never a different host.
        let absolute: Uri = "http://evil.example/v1/models".parse().unwrap();
        assert_eq!(
            target(&plain, &absolute).unwrap().to_string(),
            "https://api.openai.com/v1/models"
        );
    }

    #[test]
    fn timeouts_are_found_anywhere_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(caused_by_timeout(&e));
        assert_eq!(chain(&e), "outer: slow");
        let refused = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no",
        ));
        assert!(!caused_by_timeout(&refused));
    }
}
