//! `memtrace serve`: the node agent. Prometheus scrapes `/metrics`; each scrape reads the
//! kernel maps afresh, so figures are as of the scrape.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::{drain_ticks, load_options, maintain_ticks, seed_at_start, Shutdown};
use crate::{
    cli::{GlobalArgs, ServeArgs},
    collector::Collector,
    model::Filter,
    view::prometheus::{classic_text, Metrics, MetricsInput},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why `serve` could not listen, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {0}: the address is in use (another memtrace serve?); choose another with --listen")]
    InUse(SocketAddr, #[source] io::Error),
    #[error("cannot listen on {0}: no interface of this machine has that address; give one of its addresses with --listen")]
    NotAvailable(SocketAddr, #[source] io::Error),
    #[error("cannot listen on {0}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE); choose a higher port with --listen")]
    Denied(SocketAddr, #[source] io::Error),
    #[error("cannot listen on {0}")]
    Other(SocketAddr, #[source] io::Error),
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| match err.kind() {
            io::ErrorKind::AddrInUse => ListenError::InUse(addr, err),
            io::ErrorKind::AddrNotAvailable => ListenError::NotAvailable(addr, err),
            io::ErrorKind::PermissionDenied => ListenError::Denied(addr, err),
            _ => ListenError::Other(addr, err),
        })
}

pub async fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Bind first: a busy port is reported before anything is loaded into the kernel.
    let listener = listen(args.listen).await?;
    let mut shutdown = Shutdown::install().context("cannot install signal handlers")?;
    let mut collector = Collector::start(&load_options(global))?;
    seed_at_start(&mut collector, args.seed);
    eprintln!(
        "memtrace: serving metrics on http://{}/metrics",
        args.listen
    );

    let (scrapes, mut scrape_requests) = mpsc::channel::<oneshot::Sender<String>>(8);
    tokio::spawn(accept(listener, scrapes));
    let mut removed_since: HashMap<(u32, u64), Instant> = HashMap::new();
    let metrics = Metrics::new();
    let mut drain = drain_ticks();
    let mut maintain = maintain_ticks();
    loop {
        tokio::select! {
            _ = drain.tick() => collector.drain_events(),
            _ = maintain.tick() => collector.maintain()?,
            Some(reply) = scrape_requests.recv() => {
                let text = scrape(&mut collector, &metrics, &args, &mut removed_since)?;
                // The scraper may have gone away meanwhile: nothing to do then.
                let _ = reply.send(text);
            }
            _ = shutdown.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves HTTP connections; `/metrics` asks the main loop for a scrape. A failed `accept`
/// (out of file descriptors, say) is retried after a pause that doubles while it keeps
/// failing, so the agent never spins on it.
async fn accept(listener: TcpListener, scrapes: mpsc::Sender<oneshot::Sender<String>>) {
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF.0;
                stream
            }
            Err(err) => {
                log::warn!("cannot accept a metrics connection: {err}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, scrapes.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                log::debug!("metrics connection: {err}");
            }
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    scrapes: mpsc::Sender<oneshot::Sender<String>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, content_type, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    // Prometheus asks for OpenMetrics; anything else gets the classic text format.
    let openmetrics = request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    Ok(match request.uri().path() {
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            let text = match scrapes.send(tx).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match text {
                Some(text) if openmetrics => reply(StatusCode::OK, OPENMETRICS, text),
                Some(text) => reply(StatusCode::OK, CLASSIC_TEXT, classic_text(&text)),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "memtrace is stopping\n".to_owned(),
                ),
            }
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "memtrace serves /metrics and /healthz\n".to_owned(),
        ),
    })
}

/// One scrape: a fresh snapshot with each cgroup's largest files named, memory.stat of each
/// cgroup, and memtrace's own figures.
fn scrape(
    collector: &mut Collector,
    metrics: &Metrics,
    args: &ServeArgs,
    removed_since: &mut HashMap<(u32, u64), Instant>,
) -> anyhow::Result<String> {
    let filter = Filter {
        files_per_cgroup: Some(args.metrics_top_files),
        ..Filter::default()
    };
    let mut report = collector.snapshot_filtered(&filter)?;
    // A removed cgroup's cache can outlive it; its series go after a grace period.
    let now = Instant::now();
    let mut still_removed = HashMap::new();
    report.cgroups.retain(|c| {
        if !c.removed {
            return true;
        }
        let since = *removed_since.get(&(c.hierarchy, c.id)).unwrap_or(&now);
        still_removed.insert((c.hierarchy, c.id), since);
        now.duration_since(since) < args.removed_grace
    });
    *removed_since = still_removed;

    let resolvers = collector.resolvers();
    let memory = report
        .cgroups
        .iter()
        // A removed cgroup's directory is gone (or is another cgroup's now).
        .filter(|c| !c.removed)
        .filter_map(|c| {
            let figures = resolvers.memory_of(c.hierarchy, c.path.as_deref()?)?;
            Some(((c.hierarchy, c.id), figures))
        })
        .collect();
    let programs = collector.tracer().program_stats().unwrap_or_default();
    Ok(metrics.render(&MetricsInput {
        report: &report,
        memory: &memory,
        programs: &programs,
        top_files: args.metrics_top_files,
        max_series: args.metrics_max_series,
    }))
}
