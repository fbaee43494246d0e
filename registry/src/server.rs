//! Running the API: binding (with `TCP_NODELAY`), TLS (rustls), graceful shutdown on SIGINT/SIGTERM,
//! one structured log line per request, and garbage collection on an interval.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::api::{AppState, router};
use crate::auth::Auth;
use crate::error::{Error, IoContext, Result};
use crate::gc::{self, GcOptions};
use crate::storage::{Location, Storage};

/// Everything `serve` needs, after the configuration file and flags are merged.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Where the storage is: a directory or a bucket.
    pub storage: Location,
    /// htpasswd file: writes need credentials.
    pub htpasswd: Option<PathBuf>,
    /// Reads need credentials too.
    pub auth_pull: bool,
    /// Certificate chain and key (PEM) for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Collect garbage this often.
    pub gc_interval: Option<Duration>,
    /// How periodic collections run.
    pub gc: GcOptions,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
}

/// Serves until SIGINT or SIGTERM, then drains requests for up to
/// `shutdown_timeout`. Prints `listening on URL` on stdout once bound, so that a
/// caller that asked for port 0 learns the port.
pub async fn serve(options: ServeOptions) -> Result<()> {
    let listener = std::net::TcpListener::bind(options.addr)
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", options.addr)))?;
    serve_listener(listener, options).await
}

/// [`serve`] on a socket the caller bound (`options.addr` is not used), for
/// programs and tests that run the registry in-process.
pub async fn serve_listener(listener: std::net::TcpListener, options: ServeOptions) -> Result<()> {
    let storage = Arc::new(Storage::open_location(&options.storage)?);
    // A wrong endpoint, bucket or key fails here, not at the first push.
    let probe = storage.clone();
    tokio::task::spawn_blocking(move || probe.repositories())
        .await
        .map_err(|e| Error::Config(format!("probing the storage: {e}")))?
        .map_err(|e| Error::Config(format!("storage {}: {e}", options.storage)))?;
    let auth = options
        .htpasswd
        .as_deref()
        .map(|p| Auth::load(p, options.auth_pull))
        .transpose()?;
    if auth.is_none() && options.auth_pull {
        return Err(Error::Config("auth-pull needs htpasswd".into()));
    }
    let app = router(AppState::new(storage.clone(), auth)).layer(
        TraceLayer::new_for_http()
            .make_span_with(|req: &Request| {
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    path = %req.uri().path_and_query().map_or(req.uri().path(), |p| p.as_str()),
                )
            })
            .on_request(|_: &Request, _: &Span| {})
            .on_response(|res: &Response, latency: Duration, _: &Span| {
                tracing::info!(
                    status = res.status().as_u16(),
                    // Rounded to 0.1 ms: finer digits are noise.
                    latency_ms = (latency.as_secs_f64() * 10_000.0).round() / 10.0,
                    "request"
                );
            }),
    );

    let local = listener.local_addr().at(std::path::Path::new("listener"))?;
    let handle = axum_server::Handle::new();

    let shutdown = handle.clone();
    let timeout = options.shutdown_timeout;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down; draining requests in flight");
        shutdown.graceful_shutdown(Some(timeout));
    });

    if let Some(interval) = options.gc_interval {
        let storage = storage.clone();
        let gc_options = options.gc.clone();
        tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                ticker.tick().await;
                let (s, o) = (storage.clone(), gc_options.clone());
                let started = Instant::now();
                match tokio::task::spawn_blocking(move || gc::collect(&s, &o)).await {
                    Ok(Ok(r)) => tracing::info!(
                        blobs_removed = r.blobs_removed.len(),
                        bytes_reclaimed = r.bytes_reclaimed,
                        manifests_removed = r.manifests_removed.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "garbage collection"
                    ),
                    Ok(Err(e)) => tracing::error!(error = %e, "garbage collection failed"),
                    Err(e) => tracing::error!(error = %e, "garbage collection panicked"),
                }
            }
        });
    }

    let service = app.into_make_service();
    match &options.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| Error::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
            announce("https", local);
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            axum_server::from_tcp(listener)
                .at(std::path::Path::new("listener"))?
                .acceptor(acceptor)
                .handle(handle)
                .serve(service)
                .await
                .at(std::path::Path::new("listener"))
        }
        None => {
            announce("http", local);
            // Without TCP_NODELAY, a small response written as headers then body
            // waits for the client's delayed ACK: 40 ms per blob on loopback.
            axum_server::from_tcp(listener)
                .at(std::path::Path::new("listener"))?
                .acceptor(axum_server::accept::NoDelayAcceptor::new())
                .handle(handle)
                .serve(service)
                .await
                .at(std::path::Path::new("listener"))
        }
    }
}

fn announce(scheme: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {scheme}://{addr}");
    let _ = out.flush();
    tracing::info!(%addr, scheme, "listening");
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
