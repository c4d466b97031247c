//! Telemetry, set up once per process by [`init`], which returns a guard that flushes the
//! traces on exit.
//!
//! - **Logs**: structured, JSON when stderr is not a terminal, filtered by `RUST_LOG` (default
//!   `info`); every line inside a request carries the `trace_id` and `span_id` of its server span.
//!   `RUST_LOG` filters logs only: spans are kept at `info` whatever it says.
//! - **Traces**: OpenTelemetry spans through `tracing-opentelemetry`, exported in batches over OTLP
//!   (gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set and
//!   `OTEL_SDK_DISABLED` is not `true` ([`exporting`]); the SDK reads the other `OTEL_*`
//!   variables itself (sampler, timeouts, headers). The exporter's own gRPC traffic creates no
//!   spans: nothing instruments tonic's transport, and its crates log at `warn` only.
//! - **Without an exporter** no OpenTelemetry span is built (that layer cost 14–18 % of each
//!   function's instructions, `make profile`): the `tracing` spans remain for the logs, and the
//!   context passes through unchanged, as OpenTelemetry's API does without an SDK — a server
//!   span carries the caller's `traceparent`/`tracestate` as they came (or, when there is none, a
//!   fresh unsampled root, so that logs and the archive still get a trace id), and every span
//!   inside hands that same context to the next hop. Log lines then carry `trace_id` only: there
//!   is no span of ours to name.
//! - **Propagation**: W3C `traceparent`/`tracestate`, in HTTP headers, gRPC metadata and Kafka
//!   record headers ([`inject`], [`extract`]).

use axum::{extract::Request, middleware::Next, response::Response};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider},
};
use std::io::IsTerminal;
use tracing::{Instrument, Span, Subscriber, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::Targets,
    layer::SubscriberExt,
    registry::{LookupSpan, SpanRef},
    util::SubscriberInitExt,
};

/// Flushes and shuts the trace exporter down when dropped (at the end of `main`); holds nothing
/// when there is no exporter.
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.0.as_ref().map(SdkTracerProvider::shutdown) {
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
    let provider = exporter().map(|exporter| {
        SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(service).build())
            .with_span_processor(
                BatchSpanProcessor::builder(exporter).with_batch_config(batch_config()).build(),
            )
            .build()
    });
    let registry = tracing_subscriber::registry().with(traces(service, provider.as_ref()));
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    if std::io::stderr().is_terminal() {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(logs)).init();
    } else {
        registry.with(json_logs(std::io::stderr, logs)).init();
    }
    Guard(provider)
}

/// Targets whose logs are quiet by default (and whose spans are never traced).
const QUIET: &str =
    "h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn,opentelemetry=warn,opentelemetry_sdk=warn";

/// The layer that keeps spans, whatever `RUST_LOG` says of logs (so `RUST_LOG=warn` keeps traces
/// whole): OpenTelemetry's on `provider` when there is an exporter, else [`PassThrough`].
pub(crate) fn traces(
    service: &'static str,
    provider: Option<&SdkTracerProvider>,
) -> Box<dyn Layer<Registry> + Send + Sync> {
    // A static list of targets, so `Targets` (a prefix match) rather than an `EnvFilter`, whose
    // per-span bookkeeping on every enter and exit was a few per cent of each process
    // (`make profile`).
    let spans: Targets = format!("info,{QUIET}").parse().expect("a valid list of targets");
    match provider {
        Some(provider) => {
            Box::new(tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(spans))
        }
        None => Box::new(PassThrough.with_filter(spans)),
    }
}

/// The JSON log lines (when stderr is not a terminal): fields first, and the spans' fields, so a
/// line inside a request carries its `trace_id`.
fn json_logs<S, W>(writer: W, filter: EnvFilter) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(writer)
        .with_filter(filter)
}

/// The OTLP exporter, when the environment asks for one and it can be built. Its gRPC channel
/// runs on a runtime of its own, on a thread of its own: the batch processor exports from its own
/// thread and waits for the channel's tasks, and a function's runtime has one thread
/// (`#[tokio::main(flavor = "current_thread")]`), which is the one waiting in [`Guard`] for the
/// last export at shutdown — on that runtime the flush would wait its full timeout and lose the
/// spans.
fn exporter() -> Option<opentelemetry_otlp::SpanExporter> {
    if !exporting() {
        return None;
    }
    let disabled = |e: &dyn std::fmt::Display| eprintln!("OTLP trace exporter disabled: {e}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .inspect_err(|e| disabled(e))
        .ok()?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder().with_tonic().build().inspect_err(|e| disabled(e)).ok()?
    };
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .inspect_err(|e| disabled(e))
        .ok()?;
    Some(exporter)
}

/// Stands where the OpenTelemetry layer would when nothing is exported: it keeps the spans (for
/// the logs, and to carry the trace context) and marks the subscriber as one that passes contexts
/// through ([`Carried`]); it does nothing per span itself.
struct PassThrough;

impl<S: Subscriber> Layer<S> for PassThrough {}

/// The trace context a span carries under [`PassThrough`]: the caller's, unchanged, or a fresh
/// unsampled root. Held by the span that [`continue_trace`] was given; spans inside find it
/// through their parents.
struct Carried(SpanContext);

/// `f` on the registry's record of `span`, when the subscriber passes contexts through; `None`
/// under the OpenTelemetry layer (or with no subscriber, or for a disabled span).
fn passed_through<T>(span: &Span, f: impl FnOnce(SpanRef<'_, Registry>) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        dispatch.downcast_ref::<PassThrough>()?;
        Some(f(dispatch.downcast_ref::<Registry>()?.span(id)?))
    })
    .flatten()
}

/// The batch span processor's queue, batch and delay: the `OTEL_BSP_*` variables when set, else
/// ours, sized from `make bench` (see docs/performance.md). The SDK's defaults (a queue of
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

/// Writes `span`'s context as `traceparent` (and `tracestate`) into a carrier: its own span's
/// under the OpenTelemetry layer, the context it carries under [`PassThrough`].
pub fn inject(span: &Span, carrier: &mut dyn Injector) {
    let carried = passed_through(span, |record| {
        record.scope().find_map(|s| s.extensions().get::<Carried>().map(|c| c.0.clone()))
    });
    match carried {
        Some(Some(carried)) => {
            carrier.set(TRACEPARENT_HEADER, traceparent(&carried));
            carrier.set(TRACESTATE_HEADER, carried.trace_state().header());
        }
        Some(None) => {}
        None => {
            let context = span.context();
            opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, carrier));
        }
    }
}

const TRACEPARENT_HEADER: &str = "traceparent";
const TRACESTATE_HEADER: &str = "tracestate";

/// The `traceparent` header of a context, as the SDK's W3C propagator writes it (version 00, the
/// sampled flag only; `tracestate` always, empty when there is none), hex-encoded by hand: its
/// `format!` was two thirds of handing a context on (`make profile`). A test holds the two equal.
fn traceparent(context: &SpanContext) -> String {
    fn hex(header: &mut String, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            header.push(char::from(DIGITS[usize::from(b >> 4)]));
            header.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
    }
    let mut header = String::with_capacity(55);
    header.push_str("00-");
    hex(&mut header, &context.trace_id().to_bytes());
    header.push('-');
    hex(&mut header, &context.span_id().to_bytes());
    header.push('-');
    hex(&mut header, &[(context.trace_flags() & TraceFlags::SAMPLED).to_u8()]);
    header
}

/// Writes `span`'s context into HTTP headers, which gRPC metadata are too. The `traceparent` is
/// new on every request, so it is marked never to be indexed: HTTP/2's header compression would
/// otherwise add each one to its table of 4 KiB, pushing out the headers that do repeat.
pub fn inject_headers(span: &Span, headers: &mut axum::http::HeaderMap) {
    inject(span, &mut opentelemetry_http::HeaderInjector(headers));
    if let Some(traceparent) = headers.get_mut(TRACEPARENT_HEADER) {
        traceparent.set_sensitive(true);
    }
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
/// line inside carries them. Under [`PassThrough`], `span` carries `parent`'s context as it is
/// (a fresh unsampled root when it has none) and records its trace id.
pub fn continue_trace(span: &Span, parent: Context) {
    let carried = passed_through(span, |record| {
        let incoming = parent.span().span_context().clone();
        let carried = if incoming.is_valid() { incoming } else { root() };
        let trace_id = carried.trace_id();
        record.extensions_mut().replace(Carried(carried));
        trace_id
    });
    // Recorded once the record's extensions are released: the log layer writes into them.
    // Formatted only by a layer that records it (the logs at `info`).
    if let Some(trace_id) = carried {
        span.record("trace_id", tracing::field::display(trace_id));
        return;
    }
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

/// A new trace, not sampled: what the SDK's tracer would start for a span without a parent when
/// it samples nothing.
fn root() -> SpanContext {
    let ids = RandomIdGenerator::default();
    SpanContext::new(ids.new_trace_id(), ids.new_span_id(), TraceFlags::default(), false, TraceState::NONE)
}

/// A client-chosen string as a span attribute: at most 256 bytes (on a character boundary).
fn bounded(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    //! The context each mode hands to the next hop, through the real middleware and the log
    //! layer `init` installs (a subscriber per test, so the modes do not meet).

    use super::*;
    use axum::{Router, body::Body, routing::get};
    use http_body_util::BodyExt;
    use opentelemetry::propagation::TextMapPropagator;
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };
    use tower::ServiceExt;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACESTATE: &str = "vendor=opaque,other=1";

    /// Log lines, as the JSON layer writes them.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn json(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
    }

    /// `init`'s subscriber: spans for traces (with an exporter: OpenTelemetry's on `provider`),
    /// logs at `logs` into `lines`.
    fn subscriber(
        provider: Option<&SdkTracerProvider>,
        logs: &str,
        lines: &Lines,
    ) -> impl Subscriber + Send + Sync + use<> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let lines = lines.clone();
        tracing_subscriber::registry()
            .with(traces("test", provider))
            .with(json_logs(move || lines.clone(), EnvFilter::new(logs)))
    }

    /// A function's router whose one handler logs a line and answers the headers a client span
    /// inside the request would send on.
    fn app() -> Router {
        crate::server::app(Router::new().route(
            "/call",
            get(|| async {
                tracing::warn!("Inside");
                let span = tracing::info_span!("client", otel.kind = "client");
                axum::Json(headers(&span))
            }),
        ))
    }

    async fn call(app: &Router, incoming: &[(&str, &str)]) -> HashMap<String, String> {
        let mut request = axum::http::Request::builder().uri("/call");
        for (name, value) in incoming {
            request = request.header(*name, *value);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    fn trace_id_of(traceparent: &str) -> &str {
        traceparent.split('-').nth(1).unwrap()
    }

    #[tokio::test]
    async fn without_an_exporter_the_incoming_context_goes_on_unchanged_and_logs_carry_its_trace_id() {
        let lines = Lines::default();
        let _default = tracing::subscriber::set_default(subscriber(None, "info", &lines));
        let app = app();

        let sent = call(&app, &[("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)]).await;
        assert_eq!(sent.get("traceparent").map(String::as_str), Some(TRACEPARENT));
        assert_eq!(sent.get("tracestate").map(String::as_str), Some(TRACESTATE));
        let logged = lines.json();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0]["message"], "Inside");
        assert_eq!(logged[0]["spans"][0]["trace_id"], TRACE_ID, "{logged:?}");
        assert!(logged[0]["spans"][0].get("span_id").is_none(), "no span of ours to name: {logged:?}");

        // No caller's trace (or an invalid one): a fresh, unsampled root per request, in the
        // logs and on the next hop.
        let first = call(&app, &[]).await;
        let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let second = call(&app, &[("traceparent", invalid)]).await;
        for sent in [&first, &second] {
            let context = extract(sent).span().span_context().clone();
            assert!(context.is_valid() && !context.is_sampled(), "{sent:?}");
        }
        assert_ne!(trace_id_of(&first["traceparent"]), trace_id_of(&second["traceparent"]));
        let logged = lines.json();
        assert_eq!(logged[1]["spans"][0]["trace_id"], trace_id_of(&first["traceparent"]), "{logged:?}");
    }

    #[tokio::test]
    async fn logs_at_warn_leave_the_context_whole() {
        let lines = Lines::default();
        let _default = tracing::subscriber::set_default(subscriber(None, "warn", &lines));
        let sent = call(&app(), &[("traceparent", TRACEPARENT)]).await;
        assert_eq!(sent.get("traceparent").map(String::as_str), Some(TRACEPARENT));
        assert_eq!(lines.json().len(), 1);
    }

    #[tokio::test]
    async fn with_an_exporter_each_hop_is_a_child_span_of_the_same_trace() {
        let lines = Lines::default();
        let provider = SdkTracerProvider::builder().build();
        let _default = tracing::subscriber::set_default(subscriber(Some(&provider), "info", &lines));
        let app = app();

        let sent = call(&app, &[("traceparent", TRACEPARENT)]).await;
        let traceparent = &sent["traceparent"];
        assert_eq!(trace_id_of(traceparent), TRACE_ID);
        assert_ne!(traceparent, TRACEPARENT, "the client span is the next hop's parent");
        assert!(traceparent.ends_with("-01"), "{traceparent}");
        let logged = lines.json();
        assert_eq!(logged[0]["spans"][0]["trace_id"], TRACE_ID, "{logged:?}");
        assert!(logged[0]["spans"][0]["span_id"].is_string(), "{logged:?}");

        let fresh = call(&app, &[]).await;
        assert!(extract(&fresh).span().span_context().is_valid(), "{fresh:?}");
    }

    #[test]
    fn the_pass_through_writes_what_the_sdk_s_propagator_writes() {
        let ids = RandomIdGenerator::default();
        let states =
            [TraceState::NONE, TraceState::from_key_value([("vendor", "opaque"), ("b", "2")]).unwrap()];
        for flags in [0x00, 0x01, 0x02, 0x03, 0xff] {
            for state in &states {
                let context = SpanContext::new(
                    ids.new_trace_id(),
                    ids.new_span_id(),
                    TraceFlags::new(flags),
                    true,
                    state.clone(),
                );
                let mut sdk = HashMap::new();
                let remote = Context::new().with_remote_span_context(context.clone());
                TraceContextPropagator::new().inject_context(&remote, &mut sdk);
                let ours = HashMap::from([
                    (TRACEPARENT_HEADER.to_owned(), traceparent(&context)),
                    (TRACESTATE_HEADER.to_owned(), context.trace_state().header()),
                ]);
                assert_eq!(ours, sdk);
            }
        }
    }

    #[test]
    fn a_record_s_context_reaches_a_span_under_its_receive_span() {
        // What the runner does with a Kafka record's headers.
        let lines = Lines::default();
        tracing::subscriber::with_default(subscriber(None, "info", &lines), || {
            let record = [("ce_id", Some(&b"x"[..])), ("TraceParent", Some(TRACEPARENT.as_bytes()))];
            let parent = from_record_headers(record.into_iter()).expect("a valid traceparent");
            let receive = tracing::info_span!("receive", trace_id = Empty, span_id = Empty);
            continue_trace(&receive, parent);
            let send = tracing::info_span!(parent: &receive, "send");
            assert_eq!(headers(&send).get("traceparent").map(String::as_str), Some(TRACEPARENT));
            // Into HTTP headers, never to be indexed by HTTP/2's header compression.
            let mut http = axum::http::HeaderMap::new();
            inject_headers(&send, &mut http);
            assert_eq!(http["traceparent"], TRACEPARENT);
            assert!(http["traceparent"].is_sensitive() && !http["tracestate"].is_sensitive());
            // A span outside any trace sends none.
            assert!(!headers(&tracing::info_span!(parent: None, "alone")).contains_key("traceparent"));
        });
        // Nor does anything without a subscriber.
        assert!(headers(&tracing::info_span!("unseen")).is_empty());
    }
}
