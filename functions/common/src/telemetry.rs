//! Telemetry, set up once per process by [`init`], which returns a guard that flushes the
//! traces on exit.
//!
//! - **Logs**: structured, JSON when stderr is not a terminal, filtered by `RUST_LOG` (default
//!   `info`); every line inside a request carries the `trace_id` and `span_id` of its server span.
//!   `RUST_LOG` filters logs only: spans are kept at `info` whatever it says.
//! - **Traces**: OpenTelemetry spans through `tracing-opentelemetry`, exported in batches over OTLP
//!   (gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set and
//!   `OTEL_SDK_DISABLED` is not `true`; the SDK reads the other `OTEL_*` variables itself
//!   (sampler, timeouts, headers). The exporter's own gRPC traffic creates no spans: nothing
//!   instruments tonic's transport, and its crates log at `warn` only.
//! - **Propagation**: W3C `traceparent`/`tracestate`, in HTTP headers, gRPC metadata and Kafka
//!   record headers ([`inject`], [`extract`]).

use axum::{extract::Request, middleware::Next, response::Response};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider},
};
use std::io::IsTerminal;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes and shuts the trace exporter down when dropped (at the end of `main`).
pub struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Whether the `OTEL_*` environment asks for an exporter.
pub fn exporting() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs logging, tracing and the W3C propagator; call first thing in `main`.
pub fn init(service: &'static str) -> Guard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    const QUIET: &str =
        "h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,opentelemetry=warn,opentelemetry_sdk=warn";
    // Logs follow RUST_LOG; spans do not, so `RUST_LOG=warn` keeps traces whole.
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    // A static list of targets, so `Targets` (a prefix match) rather than an `EnvFilter`, whose
    // per-span bookkeeping on every enter and exit was a few per cent of each process
    // (`make profile`).
    let spans: Targets = format!("info,{QUIET}").parse().expect("a valid list of targets");
    let provider = provider(service);
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(spans);
    let registry = tracing_subscriber::registry().with(traces);
    if std::io::stderr().is_terminal() {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(logs)).init();
    } else {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(logs);
        registry.with(json).init();
    }
    Guard(provider)
}

/// With an exporter when the environment asks for one. Without, spans are never sampled but
/// still get ids, so logs carry them and the context still reaches the next service.
fn provider(service: &'static str) -> SdkTracerProvider {
    let builder =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service).build());
    let exporter = exporting().then(|| opentelemetry_otlp::SpanExporter::builder().with_tonic().build());
    match exporter {
        Some(Ok(exporter)) => builder.with_span_processor(
            BatchSpanProcessor::builder(exporter).with_batch_config(batch_config()).build(),
        ),
        Some(Err(e)) => {
            eprintln!("OTLP trace exporter disabled: {e}");
            builder.with_sampler(Sampler::AlwaysOff)
        }
        None => builder.with_sampler(Sampler::AlwaysOff),
    }
    .build()
}

/// The batch span processor's queue, batch and delay: the `OTEL_BSP_*` variables when set, else
/// ours, sized from `make bench` (see README, "Performance"). The SDK's defaults (a queue of
/// 2,048 spans, batches of 512, one export at a time) dropped thousands of spans per bench run:
/// at 5,000 tweets/s the runner alone ends 20,000 spans a second, and one export to a Jaeger on
/// the same cores takes tens of milliseconds. A span whose queue is full is dropped and
/// counted; the SDK logs the count at shutdown (`BatchSpanProcessor.SpansDropped`,
/// `dropped_span_count`), which the bench adds up.
pub fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    let unset = |name: &str| std::env::var_os(name).is_none();
    let mut config = BatchConfigBuilder::default();
    if unset("OTEL_BSP_MAX_QUEUE_SIZE") {
        config = config.with_max_queue_size(MAX_QUEUE_SPANS);
    }
    if unset("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        config = config.with_max_export_batch_size(EXPORT_BATCH_SPANS);
    }
    if unset("OTEL_BSP_SCHEDULE_DELAY") {
        config = config.with_scheduled_delay(EXPORT_DELAY);
    }
    config.build()
}

/// Spans a process may hold before the exporter takes them (a few seconds at full load).
pub const MAX_QUEUE_SPANS: usize = 65_536;
/// Spans per OTLP export request.
pub const EXPORT_BATCH_SPANS: usize = 4_096;
/// Longest a span waits for a batch to fill.
pub const EXPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(1_000);

/// Writes `span`'s context as `traceparent` (and `tracestate`) into a carrier.
pub fn inject(span: &Span, carrier: &mut dyn Injector) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, carrier));
}

/// `span`'s context as W3C headers (`traceparent`, and `tracestate` when there is one); empty
/// when the span is not part of a trace.
pub fn headers(span: &Span) -> std::collections::HashMap<String, String> {
    let mut headers = std::collections::HashMap::new();
    inject(span, &mut headers);
    headers
}

/// The trace context in Kafka record headers, read as Knative's dispatcher reads it: from the
/// plain `traceparent`/`tracestate` headers (any case), not from `ce_traceparent`.
pub fn from_record_headers<'a>(
    headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Option<Context> {
    // Only the two headers are copied (the last of each wins, as in a map); a record carries
    // ten or so others.
    let mut carrier: std::collections::HashMap<String, String> = std::collections::HashMap::with_capacity(2);
    for (key, value) in headers {
        let Some(value) = value else { continue };
        for name in ["traceparent", "tracestate"] {
            if key.eq_ignore_ascii_case(name) {
                carrier.insert(name.to_owned(), String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    if !carrier.contains_key("traceparent") {
        return None;
    }
    let context = extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Reads a W3C context from a carrier; empty when it holds none.
pub fn extract(carrier: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier))
}

/// Makes `parent` the parent of `span` and records the resulting ids on it, so that every log
/// line inside carries them.
pub fn continue_trace(span: &Span, parent: Context) {
    let _ = span.set_parent(parent);
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
        span.record("span_id", span_context.span_id().to_string());
    }
}

/// Middleware: a server span per request (none for probes and `/metrics`), continuing the
/// caller's trace from its `traceparent` header (gRPC metadata are HTTP/2 headers too). Its name
/// is built from the known method and the route template ([`crate::http::span_name`]), never from
/// the raw method or path; those go, cut short, into attributes only.
pub async fn server_span(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if crate::http::is_probe(path) {
        return next.run(request).await;
    }
    let method = request.method();
    let original =
        (crate::http::method_label(method) == crate::http::OTHER_METHOD).then(|| bounded(method.as_str()));
    let span = tracing::info_span!(
        "request",
        otel.name = %crate::http::span_name(&request),
        otel.kind = "server",
        http.request.method = crate::http::method_label(method),
        http.request.method_original = original,
        http.route = crate::http::route_label(&request),
        url.path = bounded(path),
        http.response.status_code = Empty,
        otel.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    continue_trace(&span, extract(&opentelemetry_http::HeaderExtractor(request.headers())));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// A client-chosen string as a span attribute: at most 256 bytes (on a character boundary).
fn bounded(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
