//! Turns a Kafka record into the CloudEvent KafkaSource delivers, exactly as the dispatcher of
//! eventing-kafka-broker does (`InvalidCloudEventInterceptor`, `CloudEventOverridesMutator`):
//! a CloudEvent record (binary or structured mode) is forwarded as it is, anything else is
//! wrapped as `dev.knative.kafka.event`, and both get `knativekafkapartition`/`…offset`.
//!
//! The sink gets the event as an HTTP request in binary mode ([`Binary`]). A record that already
//! is a binary-mode CloudEvent 1.0 — every record our producer writes — becomes that request
//! straight from its headers and bytes ([`to_binary`]'s forwarding): building an [`Event`] from
//! it and serialising the Event back (two header maps, a string per attribute, the data copied
//! twice) was about a tenth of the runner's instructions (`make profile`). It applies exactly the
//! changes the Event's round trip makes — `ce_` becomes `ce-`, names lower-cased, `time`
//! re-written as RFC 3339 in UTC, the position extensions replaced, every other header dropped —
//! and leaves to the Event path every record where the two could differ: another spec version,
//! structured mode, a missing required attribute, a repeated header (the Event keeps the last), a
//! value that is not UTF-8 or not a valid HTTP header, `dataschema` or `datacontenttype` as
//! headers. The Event path stays for those, for the records it wraps, and for dead letters;
//! `forwarding_gives_the_request_the_event_gives` compares the two.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudevents::{
    AttributesWriter, Event, EventBuilder, EventBuilderV10,
    binding::{
        http::{SPEC_VERSION_HEADER, header_prefix},
        rdkafka::MessageExt,
    },
    event::{ExtensionValue, SpecVersion},
    message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue},
};
use common::event::{KAFKA_EVENT_TYPE, OFFSET_EXTENSION, PARTITION_EXTENSION};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use rdkafka::message::{Headers, Message};

/// A CloudEvent as an HTTP request in binary mode: its `ce-*` headers, `content-type` (its
/// `datacontenttype`) and body. The source adds its own headers (`Prefer`, `Kn-Namespace`, the
/// trace context).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Binary {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The request a sink gets for `message` from the KafkaSource `namespace/name`: forwarded from
/// the record when it is a binary-mode CloudEvent the Event would not change otherwise, else
/// [`to_event`]'s event in binary mode. An error is an event with a header HTTP cannot carry.
pub fn to_binary<M: MessageExt + Message>(
    message: &M,
    namespace: &str,
    name: &str,
) -> Result<Binary, cloudevents::message::Error> {
    match forward(message) {
        Some(binary) => Ok(binary),
        None => from_event(to_event(message, namespace, name)),
    }
}

/// The event for `record`, as the KafkaSource `namespace/name` would deliver it.
pub fn to_event<M: MessageExt + Message>(message: &M, namespace: &str, name: &str) -> Event {
    // The SDK unwraps every header's value: a header without one (a Kafka null) would panic
    // the partition's delivery and stall it. Such a record is not a CloudEvent we can read, so
    // it is wrapped like any other, and its sink decides (ours dead-letter it).
    let valueless = message.headers().is_some_and(|h| h.iter().any(|h| h.value.is_none()));
    let read = if valueless { None } else { message.to_event().ok() };
    let mut event = read.unwrap_or_else(|| wrap(message, namespace, name));
    event.set_extension(PARTITION_EXTENSION, ExtensionValue::Integer(message.partition().into()));
    event.set_extension(OFFSET_EXTENSION, ExtensionValue::Integer(message.offset()));
    event
}

fn wrap(message: &impl Message, namespace: &str, name: &str) -> Event {
    let (partition, offset) = (message.partition(), message.offset());
    let mut builder = EventBuilderV10::new()
        .id(format!("partition:{partition}/offset:{offset}"))
        .ty(KAFKA_EVENT_TYPE)
        .source(format!("/apis/v1/namespaces/{namespace}/kafkasources/{name}#{}", message.topic()))
        .subject(format!("partition:{partition}#{offset}"));
    if let Some(time) = message.timestamp().to_millis().and_then(DateTime::<Utc>::from_timestamp_millis) {
        builder = builder.time(time);
    }
    if let Some(key) = message.key().filter(|k| !k.is_empty()) {
        let key = header_safe(&String::from_utf8_lossy(key));
        builder = builder.extension("partitionkey", key.clone()).extension("key", key);
    }
    let mut content_type = None;
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header_safe(&String::from_utf8_lossy(header.value.unwrap_or_default()));
            if header.key.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_lowercase());
            } else {
                builder = builder.extension(&format!("kafkaheader{}", sanitise(header.key)), value);
            }
        }
    }
    let mut event = builder.build().expect("id, type and source are set");
    if let Some(value) = message.payload() {
        event.set_datacontenttype(content_type);
        event.set_data_unchecked(value.to_vec());
    }
    event
}

/// The binary-mode request of a record that is a binary-mode CloudEvent 1.0, built from its
/// headers and bytes as they are; `None` where the Event path might make another (module doc).
/// Header for header what [`to_event`] and [`from_event`] make of it: the SDK reads a record's
/// headers into a map by exact name (`content-type`, `ce_…`), so other spellings are dropped.
fn forward(message: &impl Message) -> Option<Binary> {
    // Read once: each read of a record's header is a call into librdkafka.
    let kafka: Vec<(&str, Option<&[u8]>)> = message.headers()?.iter().map(|h| (h.key, h.value)).collect();
    let mut headers = HeaderMap::with_capacity(kafka.len() + 2);
    let mut name = String::with_capacity(32);
    let (mut spec_version, mut id, mut ty, mut source) = (false, false, false, false);
    for (i, &(key, value)) in kafka.iter().enumerate() {
        // A header without a value, or one repeated, is the Event path's to judge.
        let value = value?;
        if kafka[..i].iter().any(|&(earlier, _)| earlier == key) {
            return None;
        }
        let attribute = match key {
            "content-type" => None,
            key => match key.strip_prefix("ce_") {
                Some(attribute) => Some(attribute),
                None => continue,
            },
        };
        let value = std::str::from_utf8(value).ok()?;
        let time;
        let value = match attribute {
            None if value.starts_with("application/cloudevents+json") => return None,
            None => value,
            Some("specversion") if value == SpecVersion::V10.as_str() => {
                spec_version = true;
                value
            }
            Some("specversion" | "datacontenttype" | "dataschema") => return None,
            Some("time") => {
                time = DateTime::parse_from_rfc3339(value).ok()?.with_timezone(&Utc).to_rfc3339();
                &time
            }
            Some(PARTITION_EXTENSION | OFFSET_EXTENSION) => continue,
            Some(attribute) => {
                match attribute {
                    "id" => id = true,
                    "type" => ty = true,
                    "source" => source = true,
                    _ => {}
                }
                value
            }
        };
        let header = match attribute {
            None => hyper::header::CONTENT_TYPE,
            Some(attribute) => ce_header(attribute, &mut name)?,
        };
        headers.append(header, HeaderValue::from_str(value).ok()?);
    }
    if !(spec_version && id && ty && source) {
        return None;
    }
    for (extension, value) in
        [(PARTITION_EXTENSION, i64::from(message.partition())), (OFFSET_EXTENSION, message.offset())]
    {
        headers.append(ce_header(extension, &mut name)?, HeaderValue::from(value));
    }
    let body = message.payload().map(Bytes::copy_from_slice).unwrap_or_default();
    Some(Binary { headers, body })
}

/// `ce-<attribute>` as an HTTP header name (lower-cased, as every one is); those on every record
/// of ours without building one (`buffer` holds the others').
fn ce_header(attribute: &str, buffer: &mut String) -> Option<HeaderName> {
    Some(HeaderName::from_static(match attribute {
        "specversion" => "ce-specversion",
        "id" => "ce-id",
        "type" => "ce-type",
        "source" => "ce-source",
        "subject" => "ce-subject",
        "time" => "ce-time",
        "traceparent" => "ce-traceparent",
        PARTITION_EXTENSION => "ce-knativekafkapartition",
        OFFSET_EXTENSION => "ce-knativekafkaoffset",
        _ => {
            buffer.clear();
            buffer.push_str("ce-");
            buffer.push_str(attribute);
            return HeaderName::from_bytes(buffer.as_bytes()).ok();
        }
    }))
}

/// `event` in HTTP binary mode, header for header as the CloudEvents SDK's reqwest binding
/// writes it (what the runner sent before it delivered in process): `ce-` and the attribute or
/// extension name (lower-cased, as every HTTP header name is), `content-type` for
/// `datacontenttype`, each value as the SDK prints it, a header repeated when two names meet.
pub fn from_event(event: Event) -> Result<Binary, cloudevents::message::Error> {
    BinaryDeserializer::deserialize_binary(event, BinaryWriter::default())
}

#[derive(Default)]
struct BinaryWriter {
    headers: HeaderMap,
}

impl BinaryWriter {
    fn header(mut self, name: &str, value: String) -> cloudevents::message::Result<Self> {
        let invalid = |e: hyper::http::Error| cloudevents::message::Error::Other { source: Box::new(e) };
        let name = HeaderName::try_from(name).map_err(|e| invalid(e.into()))?;
        let value = HeaderValue::try_from(value).map_err(|e| invalid(e.into()))?;
        self.headers.append(name, value);
        Ok(self)
    }
}

impl BinarySerializer<Binary> for BinaryWriter {
    fn set_spec_version(self, spec_version: SpecVersion) -> cloudevents::message::Result<Self> {
        self.header(SPEC_VERSION_HEADER, spec_version.to_string())
    }

    fn set_attribute(self, name: &str, value: MessageAttributeValue) -> cloudevents::message::Result<Self> {
        self.header(&header_prefix(name), value.to_string())
    }

    fn set_extension(self, name: &str, value: MessageAttributeValue) -> cloudevents::message::Result<Self> {
        self.header(&header_prefix(name), value.to_string())
    }

    fn end_with_data(self, bytes: Vec<u8>) -> cloudevents::message::Result<Binary> {
        Ok(Binary { headers: self.headers, body: bytes.into() })
    }

    fn end(self) -> cloudevents::message::Result<Binary> {
        Ok(Binary { headers: self.headers, body: Bytes::new() })
    }
}

/// An extension value as the CloudEvents HTTP binding (1.0.2, §3.1.3.2) carries it in a
/// `ce-` header: every byte outside printable ASCII, and space, `"` and `%`, percent-encoded.
/// Knative's Java SDK encodes so; without it a record keyed `Perú` would reach the sink with a
/// header that is not valid HTTP and be refused as "not a CloudEvent".
fn header_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Knative keeps only `[a-z0-9]` of a lower-cased header name.
fn sanitise(key: &str) -> String {
    key.to_lowercase().chars().filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesReader, Data};
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn record(key: Option<&[u8]>, value: &[u8], headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.to_vec()),
            key.map(<[u8]>::to_vec),
            "messages".into(),
            Timestamp::CreateTime(1_700_000_000_123),
            2,
            41,
            Some(headers),
        )
    }

    #[test]
    fn a_cloudevent_record_with_a_valueless_header_is_wrapped_not_a_panic() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some("t-1") })
            .insert(Header { key: "ce_type", value: Some("dev.weather.tweet") })
            .insert(Header { key: "ce_source", value: Some("/ingest") })
            .insert(Header::<&str> { key: "ce_empty", value: None });
        let e = to_event(&record(Some(b"Chile"), b"{}", headers), "weather", "counter");
        assert_eq!(e.ty(), KAFKA_EVENT_TYPE);
        assert_eq!(e.extension("kafkaheaderceempty").map(|v| v.to_string()).as_deref(), Some(""));
        assert_eq!(e.extension(OFFSET_EXTENSION), Some(&ExtensionValue::Integer(41)));
    }

    #[test]
    fn a_plain_record_is_wrapped_like_knative_does() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "Content-Type", value: Some("Application/JSON") })
            .insert(Header { key: "X-Trace_Id", value: Some("abc") });
        let r = record(Some(b"Chile"), br#"{"texto":"sol","pais":"Chile"}"#, headers);
        let e = to_event(&r, "weather", "counter");
        assert_eq!(e.id(), "partition:2/offset:41");
        assert_eq!(e.ty(), KAFKA_EVENT_TYPE);
        assert_eq!(e.source().to_string(), "/apis/v1/namespaces/weather/kafkasources/counter#messages");
        assert_eq!(e.subject(), Some("partition:2#41"));
        assert_eq!(e.time().map(|t| t.timestamp_millis()), Some(1_700_000_000_123));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(e.extension("key").map(|v| v.to_string()).as_deref(), Some("Chile"));
        assert_eq!(e.extension("partitionkey").map(|v| v.to_string()).as_deref(), Some("Chile"));
        assert_eq!(e.extension("kafkaheaderxtraceid").map(|v| v.to_string()).as_deref(), Some("abc"));
        assert_eq!(e.extension(PARTITION_EXTENSION), Some(&ExtensionValue::Integer(2)));
        assert_eq!(e.extension(OFFSET_EXTENSION), Some(&ExtensionValue::Integer(41)));
        assert_eq!(e.data(), Some(&Data::Binary(br#"{"texto":"sol","pais":"Chile"}"#.to_vec())));
    }

    #[test]
    fn a_cloudevent_record_is_forwarded_with_its_attributes() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some("tweet-1") })
            .insert(Header { key: "ce_type", value: Some("io.github.weathertweets.tweet.v1") })
            .insert(Header { key: "ce_source", value: Some("/weather-tweets/producer") })
            .insert(Header {
                key: "ce_traceparent",
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            })
            .insert(Header { key: "content-type", value: Some("application/json") });
        let r = record(Some(b"Chile"), br#"{"texto":"sol","pais":"Chile"}"#, headers);
        let e = to_event(&r, "weather", "counter");
        assert_eq!((e.id(), e.ty()), ("tweet-1", "io.github.weathertweets.tweet.v1"));
        assert!(e.extension("key").is_none());
        assert!(e.extension("traceparent").is_some());
        assert_eq!(e.extension(OFFSET_EXTENSION), Some(&ExtensionValue::Integer(41)));
    }

    #[test]
    fn values_outside_printable_ascii_are_percent_encoded() {
        let headers =
            OwnedHeaders::new().insert(Header { key: "lugar", value: Some("Ciudad de México 100%") });
        let r = record(Some("Perú".as_bytes()), br#"{"texto":"sol","pais":"Chile"}"#, headers);
        let e = to_event(&r, "weather", "counter");
        assert_eq!(e.extension("key").map(|v| v.to_string()).as_deref(), Some("Per%C3%BA"));
        assert_eq!(
            e.extension("kafkaheaderlugar").map(|v| v.to_string()).as_deref(),
            Some("Ciudad%20de%20M%C3%A9xico%20100%25")
        );
    }

    /// A record as our producer writes it (`producer::Producer::publish`): the tweet event in
    /// binary mode, its trace as `ce_traceparent` and as a plain `traceparent` header.
    fn produced(idempotent: bool) -> OwnedMessage {
        use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
        let tweet = common::tweet::Tweet::new("Hoy llueve en Cusco", "Perú", Some("lluvioso")).unwrap();
        let mut event =
            common::event::tweet_event("0190c3e4-7d2a-7b8e-9f00-1234567890ab", "/weather/producer", &tweet);
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        event.set_extension("traceparent", traceparent);
        if idempotent {
            event.set_extension(common::event::IDEMPOTENT_EXTENSION, true);
        }
        let message = MessageRecord::from_event(event).unwrap();
        let record: rdkafka::producer::FutureRecord<'_, str, Vec<u8>> =
            rdkafka::producer::FutureRecord::to("messages").message_record(&message);
        let headers = record.headers.unwrap().insert(Header { key: "traceparent", value: Some(traceparent) });
        OwnedMessage::new(
            record.payload.cloned(),
            Some("Perú".as_bytes().to_vec()),
            "messages".into(),
            Timestamp::CreateTime(1_700_000_000_123),
            1,
            7_001,
            Some(headers),
        )
    }

    /// A binary-mode record with every header the forwarding has to treat as the Event does.
    fn unusual() -> OwnedMessage {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some("") })
            .insert(Header { key: "ce_ID", value: Some("an extension, not the id") })
            .insert(Header { key: "ce_type", value: Some("io.github.weathertweets.tweet.v1") })
            .insert(Header { key: "ce_source", value: Some("not a URI at all") })
            .insert(Header { key: "ce_subject", value: Some("Perú 100%") })
            .insert(Header { key: "ce_time", value: Some("2026-12-02T11:30:00.5+02:00") })
            .insert(Header { key: "ce_MixedCase", value: Some("x") })
            .insert(Header { key: "ce_mixedcase", value: Some("y") })
            .insert(Header { key: "ce_knativekafkaoffset", value: Some("999") })
            .insert(Header { key: "ce_KnativeKafkaPartition", value: Some("kept") })
            .insert(Header { key: "ce_", value: Some("empty name") })
            .insert(Header { key: "Content-Type", value: Some("text/other") })
            .insert(Header { key: "CE_ignored", value: Some("1") })
            .insert(Header { key: "content-type", value: Some("application/json; charset=utf-8") });
        record(None, br#"{"texto":"sol","pais":"Chile"}"#, headers)
    }

    /// Header names and values, sorted: the order of a request's headers carries nothing, and
    /// the Event keeps its extensions in a hash map.
    fn sorted(headers: &HeaderMap) -> Vec<(String, String)> {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        all.sort();
        all
    }

    /// The request the runner sent before it delivered in process: the Event through the
    /// CloudEvents SDK's reqwest binding.
    fn through_reqwest(event: Event) -> (Vec<(String, String)>, Vec<u8>) {
        use cloudevents::binding::reqwest::RequestBuilderExt;
        let request =
            reqwest::Client::new().post("http://127.0.0.1:8082").event(event).unwrap().build().unwrap();
        let body = request.body().and_then(reqwest::Body::as_bytes).unwrap_or_default().to_vec();
        (sorted(request.headers()), body)
    }

    #[test]
    fn the_event_in_binary_mode_is_what_reqwest_sent() {
        let plain = record(Some(b"Chile"), b"\xff not a tweet", OwnedHeaders::new());
        for message in [produced(false), produced(true), unusual(), plain] {
            let event = to_event(&message, "weather", "counter");
            let binary = from_event(event.clone()).unwrap();
            assert_eq!((sorted(&binary.headers), binary.body.to_vec()), through_reqwest(event));
            let ours = to_binary(&message, "weather", "counter").unwrap();
            assert_eq!((sorted(&ours.headers), ours.body), (sorted(&binary.headers), binary.body));
        }
    }

    #[test]
    fn forwarding_gives_the_request_the_event_gives() {
        for message in [produced(false), produced(true), unusual()] {
            let forwarded = forward(&message).expect("a binary-mode CloudEvent 1.0 is forwarded");
            let event = to_event(&message, "weather", "counter");
            let through_event = from_event(event.clone()).unwrap();
            assert_eq!(sorted(&forwarded.headers), sorted(&through_event.headers));
            assert_eq!(forwarded.body, through_event.body);
            assert_eq!((sorted(&forwarded.headers), forwarded.body.to_vec()), through_reqwest(event));
            assert_eq!(to_binary(&message, "weather", "counter").unwrap(), forwarded);
        }

        let tweet = forward(&produced(true)).unwrap();
        let header = |name: &str| tweet.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(header("ce-type").as_deref(), Some(common::event::TWEET_TYPE));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("ce-knativekafkapartition").as_deref(), Some("1"));
        assert_eq!(header("ce-knativekafkaoffset").as_deref(), Some("7001"));
        assert_eq!(header("ce-weatheridempotent").as_deref(), Some("true"));
        assert!(header("ce-traceparent").is_some());
        assert!(header("traceparent").is_none(), "a plain Kafka header is not an attribute");
        assert_eq!(tweet.body, produced(true).payload().unwrap());

        let odd = forward(&unusual()).unwrap();
        let values = |name: &str| -> Vec<&str> {
            odd.headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("?")).collect()
        };
        assert_eq!(
            values("ce-time"),
            ["2026-12-02T09:30:00.500+00:00"],
            "time in UTC, as the Event writes it"
        );
        assert_eq!(values("ce-knativekafkaoffset").len(), 1, "the record's own offset is replaced");
        assert_eq!(values("ce-knativekafkapartition").len(), 2, "another spelling is another extension");
        assert_eq!(values("content-type"), ["application/json; charset=utf-8"]);
        assert!(values("ce-ignored").is_empty());
    }

    #[test]
    fn records_the_forwarding_could_get_wrong_take_the_event_path() {
        let binary = |extra: &[(&str, &[u8])], drop: &str| {
            let mut headers = OwnedHeaders::new();
            for (key, value) in [
                ("ce_specversion", &b"1.0"[..]),
                ("ce_id", b"tweet-1"),
                ("ce_type", b"io.github.weathertweets.tweet.v1"),
                ("ce_source", b"/weather-tweets/producer"),
                ("content-type", b"application/json"),
            ]
            .into_iter()
            .filter(|(key, _)| *key != drop)
            .chain(extra.iter().copied())
            {
                headers = headers.insert(Header { key, value: Some(value) });
            }
            record(Some(b"Chile"), br#"{"texto":"sol","pais":"Chile"}"#, headers)
        };
        assert!(forward(&binary(&[], "")).is_some(), "the base record is forwarded");
        let cases: [(&str, OwnedMessage); 10] = [
            ("spec version 0.3", binary(&[("ce_specversion", b"0.3")], "ce_specversion")),
            ("no spec version: not a CloudEvent", binary(&[], "ce_specversion")),
            ("no id", binary(&[], "ce_id")),
            ("structured mode", binary(&[("content-type", b"application/cloudevents+json")], "content-type")),
            ("a repeated header", binary(&[("ce_subject", b"a"), ("ce_subject", b"b")], "")),
            ("a value that is not UTF-8", binary(&[("ce_lugar", b"M\xe9xico")], "")),
            ("a value HTTP cannot carry", binary(&[("ce_lugar", b"two\nlines")], "")),
            ("a time that is not RFC 3339", binary(&[("ce_time", b"yesterday")], "")),
            ("dataschema", binary(&[("ce_dataschema", b"HTTP://Example.com")], "")),
            ("datacontenttype as a header", binary(&[("ce_datacontenttype", b"text/plain")], "content-type")),
        ];
        for (case, message) in cases {
            assert!(forward(&message).is_none(), "{case}");
            let through_event = from_event(to_event(&message, "weather", "counter"));
            match (to_binary(&message, "weather", "counter"), through_event) {
                (Ok(ours), Ok(event)) => {
                    assert_eq!(
                        (sorted(&ours.headers), ours.body),
                        (sorted(&event.headers), event.body),
                        "{case}"
                    )
                }
                (Err(_), Err(_)) => assert_eq!(case, "a value HTTP cannot carry"),
                (ours, event) => panic!("{case}: {ours:?} vs {event:?}"),
            }
        }
        // The ones the Event path wraps as a plain record.
        for message in [binary(&[], "ce_specversion"), binary(&[("ce_time", b"yesterday")], "")] {
            let request = to_binary(&message, "weather", "counter").unwrap();
            assert_eq!(request.headers.get("ce-type").unwrap(), KAFKA_EVENT_TYPE);
        }
    }

    #[test]
    fn a_broken_cloudevent_is_wrapped_not_dropped() {
        let headers = OwnedHeaders::new().insert(Header { key: "ce_specversion", value: Some("0.1") });
        let r = record(None, b"\xff\x00garbage", headers);
        let e = to_event(&r, "weather", "archiver");
        assert_eq!(e.ty(), KAFKA_EVENT_TYPE);
        assert!(e.extension("key").is_none());
        assert_eq!(e.data(), Some(&Data::Binary(b"\xff\x00garbage".to_vec())));
    }
}
