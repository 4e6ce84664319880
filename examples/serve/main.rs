//! An OpenAI-compatible HTTP server: many conversations on one model, decoded together in one
//! batch, each resuming from its cached state.
//!
//! ```text
//! cargo run --release --example serve -- --model DIR|HUB_ID [--backend cpu|wgpu|cuda]
//!     [--dtype auto|f32|bf16|f16|q8|q4] [--max-batch 8] [--max-queue 64]
//!     [--cache-bytes 1073741824] [--host 127.0.0.1] [--port 8000]
//! ```
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent events
//! with `"stream": true`), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
//! Prints `listening on http://HOST:PORT` on stdout once it accepts connections (`--port 0`
//! picks a free port), then one line per request on stderr.
//!
//! The engine thread owns the model and a [`falcon_mamba::Scheduler`]; the HTTP handlers run on
//! tokio and talk to it through channels. Past `--max-batch` running plus `--max-queue` waiting
//! requests, new ones get 429 at once.

// The examples' shared flags and loading; the sampling flags are not this server's (requests
// carry their own settings).
#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod api;
mod engine;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use api::{ApiError, Endpoint, Envelope, Prompt};
use axum::body::Body;
use axum::extract::State as AppState;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use common::backend::OnBackend;
use common::{line, ModelArgs};
use engine::{Job, Output};
use falcon_mamba::core::ChatTemplate;
use falcon_mamba::{GenerationConfig, SchedulerConfig, SelectiveScanBackend};
use futures_util::stream::{self, Stream};
use futures_util::StreamExt;
use metrics::Metrics;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Request bodies past this size are refused.
const MAX_BODY_BYTES: usize = 1 << 20;
/// How much of a refused body is read (and dropped) before the connection is closed.
const DRAIN_BYTES: usize = 64 << 20;

/// Text the ChatML template closes a turn with; instruct models write it as plain text.
const END_OF_TURN: &str = "<|im_end|>";

/// Serve a Falcon Mamba model over an OpenAI-compatible HTTP API.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests that may wait for a batch row; past them, 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Bytes of conversation states kept for resuming (0: no cache).
    #[arg(long, default_value_t = 1 << 30)]
    cache_bytes: usize,
    /// Prompt tokens fed per engine step (a long prompt is read this much at a time between the
    /// running sequences' decode steps).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// `max_tokens` of requests that set none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// The model name clients use (default: `--model`).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
}

/// What every handler shares.
struct App {
    model_name: String,
    created: u64,
    template: ChatTemplate,
    defaults: GenerationConfig,
    default_max_tokens: usize,
    /// Admitted requests not yet answered, and the most allowed.
    in_flight: AtomicUsize,
    limit: usize,
    /// To the engine thread.
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

/// Holds a request's place in the queue until its response is done.
struct Admission(Arc<App>);

impl Admission {
    fn new(app: &Arc<App>) -> Option<Self> {
        let admitted = app
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < app.limit).then_some(n + 1)
            })
            .is_ok();
        app.metrics
            .set_in_flight(app.in_flight.load(Ordering::Acquire));
        admitted.then(|| Admission(app.clone()))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let n = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.metrics.set_in_flight(n);
    }
}

struct Serve {
    dir: PathBuf,
    cli: Cli,
}

impl OnBackend for Serve {
    fn run<B: SelectiveScanBackend>(self, device: B::Device) -> Result<(), String> {
        let cli = self.cli;
        let (model, tokenizer) = common::load::<B>(&self.dir, &device, &cli.model.dtype)?;
        let mut defaults = common::checkpoint_generation_config(&self.dir)?;
        // A chat turn also ends at the template's end-of-turn token, when it is one.
        defaults
            .eos_token_ids
            .extend(tokenizer.token_id(END_OF_TURN));
        let scheduler = SchedulerConfig::default()
            .with_max_batch(cli.max_batch)
            .with_prefill_chunk(cli.prefill_chunk)
            .with_cache_bytes(cli.cache_bytes);
        let (jobs, receiver) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let app = Arc::new(App {
            model_name: cli
                .served_model_name
                .clone()
                .unwrap_or(cli.model.model.clone()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            template: ChatTemplate::from_dir(&self.dir).map_err(line)?,
            defaults,
            default_max_tokens: cli.default_max_tokens,
            in_flight: AtomicUsize::new(0),
            limit: cli.max_batch + cli.max_queue,
            jobs,
            metrics: metrics.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(line)?;
        let address = format!("{}:{}", cli.host, cli.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&address))
            .map_err(|e| format!("{address}: {e}"))?;
        let local: SocketAddr = listener.local_addr().map_err(line)?;
        println!("listening on http://{local}");
        eprintln!(
            "serving {} ({} weights) on http://{local}: batch {}, queue {}, state cache {} MiB",
            app.model_name,
            model.weight_format().name(),
            cli.max_batch,
            cli.max_queue,
            cli.cache_bytes >> 20
        );
        let server = runtime.spawn(async move {
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            axum::serve(listener, router(app))
                .with_graceful_shutdown(shutdown)
                .await
        });
        // The engine runs here until the server (and with it every job sender) is gone.
        engine::run(&model, &tokenizer, scheduler, receiver, metrics)?;
        runtime.block_on(server).map_err(line)?.map_err(line)
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn chat(AppState(app): AppState<Arc<App>>, body: Body) -> Response {
    complete(app, Endpoint::Chat, body).await
}

async fn completions(AppState(app): AppState<Arc<App>>, body: Body) -> Response {
    complete(app, Endpoint::Completions, body).await
}

async fn models(AppState(app): AppState<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [{
        "id": app.model_name,
        "object": "model",
        "created": app.created,
        "owned_by": "falcon-mamba",
    }]}))
}

async fn metrics(AppState(app): AppState<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// Both completion endpoints: check, queue, then answer whole or as a stream.
async fn complete(app: Arc<App>, endpoint: Endpoint, body: Body) -> Response {
    let received = Instant::now();
    let response = match start(&app, endpoint, body, received).await {
        Ok(response) => response,
        Err(e) => {
            eprintln!(
                "{} {} {}",
                endpoint.name(),
                e.status.as_u16(),
                e.body()["error"]["message"]
            );
            e.into_response()
        }
    };
    app.metrics
        .request(endpoint.name(), response.status().as_u16());
    response
}

async fn start(
    app: &Arc<App>,
    endpoint: Endpoint,
    body: Body,
    received: Instant,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let request = api::parse(endpoint, &bytes, &app.defaults, app.default_max_tokens)?;
    if request.model != app.model_name {
        return Err(ApiError::unknown_model(&request.model, &app.model_name));
    }
    let mut stop = request.stop;
    let prompt = match request.prompt {
        Prompt::Text(text) => text,
        Prompt::Chat(messages) => {
            let text = app
                .template
                .render(&messages, true)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            if text.contains(END_OF_TURN) {
                stop.push(END_OF_TURN.to_string());
            }
            text
        }
    };
    let admission = Admission::new(app).ok_or_else(|| ApiError::busy(app.limit))?;
    let (out, mut results) = unbounded_channel();
    let job = Job {
        prompt,
        config: request.config,
        stop,
        endpoint: endpoint.name(),
        received,
        out,
    };
    app.jobs
        .send(job)
        .map_err(|_| ApiError::internal("the engine is gone"))?;
    match results.recv().await {
        Some(Output::Started) => {}
        Some(Output::Failed(message)) => return Err(ApiError::invalid("", message)),
        _ => return Err(ApiError::internal("the engine dropped the request")),
    }
    let envelope = Envelope {
        id: format!(
            "{}-{:x}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
        created: app.created,
        model: app.model_name.clone(),
        endpoint,
    };
    if request.stream {
        let events = sse_events(envelope, results, request.include_usage, admission);
        // `X-Accel-Buffering: no` keeps nginx-style proxies from holding the events back.
        let headers = [("x-accel-buffering", "no")];
        let sse = Sse::new(events).keep_alive(KeepAlive::default());
        return Ok((headers, sse).into_response());
    }
    let mut text = String::new();
    loop {
        match results.recv().await {
            Some(Output::Text(piece)) => text.push_str(&piece),
            Some(Output::Done(usage)) => {
                drop(admission);
                return Ok((StatusCode::OK, Json(envelope.response(text, &usage))).into_response());
            }
            Some(Output::Failed(message)) => return Err(ApiError::internal(message)),
            Some(Output::Started) | None => {
                return Err(ApiError::internal("the engine dropped the request"))
            }
        }
    }
}

/// The request body, up to [`MAX_BODY_BYTES`]. A larger one is read on without being kept (up
/// to [`DRAIN_BYTES`]) so the client, still sending, gets the 400 rather than a broken pipe.
async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    let mut frames = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0;
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| ApiError::invalid("", format!("reading the body: {e}")))?;
        total += frame.len();
        if total <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&frame);
        } else if total > DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(ApiError::invalid(
            "",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// The stream of a completion: a role chunk (chat), text chunks, a finish chunk, optionally a
/// usage chunk, then `[DONE]`. Dropping it (the client left) drops the receiver, and the engine
/// frees the row at its next token.
fn sse_events(
    envelope: Envelope,
    results: UnboundedReceiver<Output>,
    include_usage: bool,
    admission: Admission,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    let data = |value: serde_json::Value| Event::default().data(value.to_string());
    let first = (envelope.endpoint == Endpoint::Chat).then(|| data(envelope.chunk(None, None)));
    // The state: the receiver, and the admission until the last event is out.
    let tail = stream::unfold(
        (results, Some(admission), envelope),
        move |(mut results, admission, envelope)| async move {
            admission.as_ref()?;
            let (events, done) = match results.recv().await {
                Some(Output::Text(piece)) => {
                    (vec![data(envelope.chunk(Some(&piece), None))], false)
                }
                Some(Output::Done(usage)) => {
                    let mut events = vec![data(envelope.chunk(None, Some(usage.finish_reason)))];
                    if include_usage {
                        events.push(data(envelope.usage_chunk(&usage)));
                    }
                    events.push(Event::default().data("[DONE]"));
                    (events, true)
                }
                Some(Output::Failed(message)) => (
                    vec![
                        data(ApiError::internal(message).body()),
                        Event::default().data("[DONE]"),
                    ],
                    true,
                ),
                Some(Output::Started) | None => (Vec::new(), true),
            };
            let admission = if done { None } else { admission };
            Some((events, (results, admission, envelope)))
        },
    );
    stream::iter(first)
        .chain(tail.flat_map(stream::iter))
        .map(Ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let model_args = cli.model.clone();
    common::run(&model_args, |dir| Serve { dir, cli })
}
