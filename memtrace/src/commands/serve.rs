//! `memtrace serve`: the node agent. Prometheus scrapes `/metrics`; each scrape reads the
//! kernel maps afresh, so figures are as of the scrape.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{self, Write},
    net::SocketAddr,
    pin::Pin,
    process::ExitCode,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming},
    service::service_fn,
    Request, Response, StatusCode,
};
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
    view::prometheus::{ExpositionFormat, Scrape},
};

/// Bytes of exposition sent to the scraper at a time: the text of a scrape is never held
/// whole.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written ahead of the scraper.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A scrape the HTTP side asks the main loop for: the format, and where to send the body's
/// chunks once the scrape is gathered.
struct ScrapeRequest {
    format: ExpositionFormat,
    reply: oneshot::Sender<mpsc::Receiver<Bytes>>,
}

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

    let (scrapes, mut scrape_requests) = mpsc::channel::<ScrapeRequest>(8);
    tokio::spawn(accept(listener, scrapes));
    let mut removed_since: HashMap<(u32, u64), Instant> = HashMap::new();
    let mut drain = drain_ticks();
    let mut maintain = maintain_ticks();
    loop {
        tokio::select! {
            _ = drain.tick() => collector.drain_events(),
            _ = maintain.tick() => collector.maintain(),
            Some(request) = scrape_requests.recv() => {
                let scrape = scrape(&mut collector, &args, &mut removed_since)?;
                let (chunks, body) = mpsc::channel(CHUNKS_IN_FLIGHT);
                // The scraper may have gone away meanwhile: nothing to do then.
                if request.reply.send(body).is_ok() {
                    // Written on a thread of its own, at the scraper's pace: the main loop
                    // goes on draining the kernel's maps.
                    tokio::task::spawn_blocking(move || {
                        let began = Instant::now();
                        let mut out = ChunkWriter::new(chunks);
                        let written = scrape
                            .write(&mut out, request.format)
                            .and_then(|()| out.flush());
                        match written {
                            Ok(()) => log::debug!("scrape: written in {:?}", began.elapsed()),
                            Err(err) => log::debug!("scrape not sent whole: {err}"),
                        }
                    });
                }
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
async fn accept(listener: TcpListener, scrapes: mpsc::Sender<ScrapeRequest>) {
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

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

async fn respond(
    request: Request<Incoming>,
    scrapes: mpsc::Sender<ScrapeRequest>,
) -> Result<Response<ResponseBody>, Infallible> {
    let reply = |status, content_type, body: ResponseBody| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(body)
            .unwrap_or_default()
    };
    let text = |text: &'static str| Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync();
    // Prometheus asks for OpenMetrics; anything else gets the classic text format.
    let format = ExpositionFormat::accepted(
        request
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|accept| accept.to_str().ok()),
    );
    Ok(match request.uri().path() {
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            let body = match scrapes.send(ScrapeRequest { format, reply: tx }).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match body {
                Some(chunks) => reply(
                    StatusCode::OK,
                    format.content_type(),
                    ChunkBody(chunks).boxed_unsync(),
                ),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    text("memtrace is stopping\n"),
                ),
            }
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", text("ok\n")),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            text("memtrace serves /metrics and /healthz\n"),
        ),
    })
}

/// A response body of chunks as they are written.
struct ChunkBody(mpsc::Receiver<Bytes>);

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// Collects written text into chunks of [`CHUNK_BYTES`] and sends each to the response body,
/// waiting while the scraper is [`CHUNKS_IN_FLIGHT`] chunks behind. A scraper gone away is a
/// broken pipe.
struct ChunkWriter {
    chunk: Vec<u8>,
    chunks: mpsc::Sender<Bytes>,
}

impl ChunkWriter {
    fn new(chunks: mpsc::Sender<Bytes>) -> Self {
        Self {
            chunk: Vec::with_capacity(CHUNK_BYTES),
            chunks,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES));
        self.chunks
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.chunk.extend_from_slice(bytes);
        if self.chunk.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// One scrape: a fresh snapshot gathered cgroup by cgroup as it is built (each cgroup's
/// largest files named), memory.stat of each cgroup, and memtrace's own figures.
fn scrape(
    collector: &mut Collector,
    args: &ServeArgs,
    removed_since: &mut HashMap<(u32, u64), Instant>,
) -> anyhow::Result<Scrape> {
    let filter = Filter {
        files_per_cgroup: Some(args.metrics_top_files),
        ..Filter::default()
    };
    // A removed cgroup's cache can outlive it; its series go after a grace period.
    let now = Instant::now();
    let mut still_removed = HashMap::new();
    let mut scrape = Scrape::new(args.metrics_top_files, args.metrics_max_series);
    let mut own = None;
    collector
        .write_snapshot(&filter, |header, cgroups| {
            own = Some((header.stats.clone(), header.snapshot_seconds));
            let (cgroups, mut after_each) = cgroups.into_parts();
            for cgroup in cgroups {
                let shown = !cgroup.removed || {
                    let since = *removed_since
                        .get(&(cgroup.hierarchy, cgroup.id))
                        .unwrap_or(&now);
                    still_removed.insert((cgroup.hierarchy, cgroup.id), since);
                    now.duration_since(since) < args.removed_grace
                };
                if shown {
                    scrape.add_cgroup(&cgroup);
                }
                after_each(cgroup);
            }
            Ok(())
        })?
        .context("cannot gather the scrape")?;
    *removed_since = still_removed;
    let gathered = now.elapsed();
    let resolvers = collector.resolvers();
    scrape.add_memory(|hierarchy, path| resolvers.memory_of(hierarchy, path));
    log::debug!(
        "scrape: gathered in {gathered:?}, memory.stat read in {:?}",
        now.elapsed() - gathered
    );
    let (stats, snapshot_seconds) = own.unwrap_or_default();
    let programs = collector.tracer().program_stats().unwrap_or_default();
    scrape.set_own(stats, snapshot_seconds, programs);
    Ok(scrape)
}
