//! The server: listener, TLS, HTTP/1.1 and HTTP/2 connections, graceful shutdown,
//! and the per-request pipeline in [`relay`].
//!
//! [`Server::bind`] validates everything that can fail (address, certificates,
//! upstream client) before it returns, so that a running server only has
//! per-request failures left, each of which becomes a response. [`Server::run`]
//! accepts until its shutdown future resolves, then stops accepting, marks itself
//! not ready, and lets in-flight requests (streams included) finish within the
//! grace period. [`Server::reloader`] hands out what reloads the policy while it
//! runs ([`reload`]).

pub mod admin;
pub mod body;
pub mod govern;
pub mod headers;
pub mod relay;
pub mod reload;
pub mod sse;
pub mod tls;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use reload::Reloader;
use upstream::UpstreamClient;

/// State shared by every request.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The pooled upstream client.
    pub client: UpstreamClient,
    /// Set once shutdown has begun; `readyz` then answers 503.
    pub draining: AtomicBool,
    /// Policy, receipts, identity and governed tools.
    pub gateway: Gateway,
    /// The budget for what governed requests in progress hold, in KiB
    /// (`max_governed_bytes`): each holds permits for its body and parsed form until
    /// it ends, for an answer as long as it holds the answer, and for what its
    /// stream's rewriting holds of a round.
    pub governed_budget: Arc<tokio::sync::Semaphore>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The upstream client could not be built.
    #[error("upstream client: {0}")]
    Upstream(String),
    /// Governance could not be set up.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    /// Loads the TLS files, builds the upstream client and binds the listener.
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        // Several crates may enable rustls providers; pin the one tollgate uses.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tls = match &config.tls {
            Some(files) => Some(TlsAcceptor::from(tls::server_config(files)?)),
            None => None,
        };
        let gateway = Gateway::open(&config.govern)?;
        let client =
            upstream::client(&config.upstream, &config.timeouts).map_err(ServeError::Upstream)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let governed_budget = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(config.limits.max_governed_bytes / 1024)
                .unwrap_or(usize::MAX)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            listener,
            tls,
            shared: Arc::new(Shared {
                config,
                client,
                draining: AtomicBool::new(false),
                gateway,
                governed_budget,
            }),
            local_addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL clients use: `http://addr` or `https://addr`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// A handle that reloads this server's policy, before or while it runs. The
    /// watched files are read now: a change from here on is a change.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.shared.clone())
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            tls,
            shared,
            local_addr: _,
        } = self;
        let config = &shared.config;
        let builder = Arc::new(connection_builder(config));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let shared = shared.clone();
            let tls = tls.clone();
            let first_request_timeout = config.timeouts.header_read;
            tokio::spawn(async move {
                // The first request must arrive within the header-read timeout of
                // the accept, TLS handshake and protocol detection included; after
                // it, HTTP/1.1's own header timeout guards each next request.
                let first_request = Arc::new(AtomicBool::new(false));
                let seen = first_request.clone();
                let service = service_fn(move |req| {
                    seen.store(true, Ordering::Relaxed);
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(relay::handle(shared, req).await) }
                });
                let serve = async {
                    let result = match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                        Some(acceptor) => {
                            let tls_stream = match acceptor.accept(stream).await {
                                Ok(s) => s,
                                Err(error) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                            watcher.watch(conn).await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                };
                let deadline = async {
                    tokio::time::sleep(first_request_timeout).await;
                    if first_request.load(Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = serve => {}
                    () = deadline => tracing::debug!(%peer, "no request within the header-read timeout; connection closed"),
                }
            });
        }

        shared.draining.store(true, Ordering::Release);
        drop(listener);
        let grace = config.timeouts.shutdown_grace;
        tracing::info!(
            connections = graceful.count(),
            ?grace,
            "shutting down: no new connections, finishing in-flight requests"
        );
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections finished"),
            () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
        }
    }
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above tollgate's, so that a request just over
    // tollgate's limit gets tollgate's JSON error; far over it, hyper answers 431.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.header_read)
        .max_buf_size((limits.max_header_bytes * 2).max(64 * 1024))
        .max_headers(limits.max_headers * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}
