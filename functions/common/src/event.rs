//! The CloudEvent that carries a tweet: built by `producer`, read back by the sinks, either as
//! we wrote it or wrapped by a KafkaSource (`dev.knative.kafka.event`, see `runner::record`).

use crate::tweet::{Tweet, TweetError};
use chrono::{DateTime, Utc};
use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};

/// The `type` of our tweet events.
pub const TWEET_TYPE: &str = "io.github.weathertweets.tweet.v1";
/// The `type` KafkaSource gives to a record that was not a CloudEvent.
pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";
/// Extensions KafkaSource adds to every event it delivers.
pub const PARTITION_EXTENSION: &str = "knativekafkapartition";
pub const OFFSET_EXTENSION: &str = "knativekafkaoffset";
/// Extension of a tweet event published with an `Idempotency-Key`: its id stands for the client's
/// request ([`tweet_id`]), so the sinks deduplicate it by id as well as by Kafka position.
pub const IDEMPOTENT_EXTENSION: &str = "weatheridempotent";
/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// The namespace of the UUIDv5s derived from idempotency keys (a fixed, random UUID of ours).
pub const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::uuid!("6f1d2a8e-4c0b-4d5e-9a3f-1b7c8d9e0f12");

/// The id ingest gives a tweet before publishing it: a fresh UUIDv7, or with an
/// `Idempotency-Key` the UUIDv5 of the key and the normalised tweet. The same key and body are
/// one id however often they are posted; the same key with another body is another id, so even
/// once ingest has forgotten the key, a second tweet is never taken for the first.
pub fn tweet_id(idempotency_key: Option<&str>, tweet: &Tweet) -> uuid::Uuid {
    let Some(key) = idempotency_key else { return uuid::Uuid::now_v7() };
    let mut name = Vec::with_capacity(key.len() + 512);
    name.extend_from_slice(key.as_bytes());
    // A key is visible ASCII (`MAX_IDEMPOTENCY_KEY_BYTES`), so it never holds the separator.
    name.push(b'\n');
    serde_json::to_writer(&mut name, tweet).expect("a tweet serialises");
    uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name)
}

/// The UUIDv5 of a name alone (a fresh UUIDv7 for an empty one): the id of a record that the
/// fault suite writes straight to Kafka, without ingest.
pub fn event_id(name: &str) -> String {
    if name.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string()
    }
}

/// Builds the tweet event that `producer` writes to Kafka.
pub fn tweet_event(id: &str, source: &str, tweet: &Tweet) -> Event {
    EventBuilderV10::new()
        .id(id)
        .ty(TWEET_TYPE)
        .source(source)
        .time(Utc::now())
        .data("application/json", serde_json::to_value(tweet).expect("a tweet serialises"))
        .build()
        .expect("id, type and source are set")
}

/// A tweet as a sink receives it, with where it came from in Kafka when the event says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: String,
    /// The event's `source`; Knative's wrapping names the record's topic in it (`…#<topic>`).
    pub source: String,
    pub tweet: Tweet,
    pub time: Option<DateTime<Utc>>,
    pub position: Option<Position>,
    /// The W3C trace id from the event's `traceparent` extension, when it has a valid one.
    pub trace_id: Option<String>,
    /// Published with an `Idempotency-Key`: the id identifies the tweet across records.
    pub idempotent: bool,
}

/// A record's place in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// Why an event can never be applied; sinks answer 400 so it goes to the dead-letter sink.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unsupported event type {0:?}; expected {TWEET_TYPE} or {KAFKA_EVENT_TYPE}")]
    Type(String),
    #[error("event has no data")]
    NoData,
    #[error("event data is not a tweet: {0}")]
    Tweet(#[from] TweetError),
    #[error("extension {name} is {value:?}, not a non-negative integer")]
    Extension { name: &'static str, value: String },
}

impl Received {
    /// Reads a delivered event. The tweet is validated again: a wrapped record may come from any
    /// producer, and normalising an already normal tweet changes nothing.
    pub fn from_event(event: &Event) -> Result<Received, EventError> {
        if event.ty() != TWEET_TYPE && event.ty() != KAFKA_EVENT_TYPE {
            return Err(EventError::Type(event.ty().chars().take(64).collect()));
        }
        let tweet = match event.data().ok_or(EventError::NoData)? {
            Data::Json(serde_json::Value::Object(map)) => Tweet::from_map(map)?,
            Data::Json(other) => Tweet::from_json(other.to_string().as_bytes())?,
            Data::Binary(bytes) => Tweet::from_json(bytes)?,
            Data::String(s) => Tweet::from_json(s.as_bytes())?,
        };
        let partition = extension_int(event, PARTITION_EXTENSION)?;
        let offset = extension_int(event, OFFSET_EXTENSION)?;
        let position = match (partition, offset) {
            (Some(p), Some(o)) => Some(Position {
                partition: i32::try_from(p)
                    .map_err(|_| EventError::Extension { name: PARTITION_EXTENSION, value: p.to_string() })?,
                offset: o,
            }),
            _ => None,
        };
        let trace_id = match event.extension("traceparent") {
            Some(ExtensionValue::String(tp)) => trace_id(tp),
            _ => None,
        };
        Ok(Received {
            id: event.id().to_owned(),
            source: event.source().to_string(),
            tweet,
            time: event.time().copied(),
            position,
            trace_id,
            idempotent: event.extension(IDEMPOTENT_EXTENSION).is_some(),
        })
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32);
    valid.then(|| id.to_ascii_lowercase())
}

fn extension_int(event: &Event, name: &'static str) -> Result<Option<i64>, EventError> {
    let bad = |value: String| EventError::Extension { name, value: value.chars().take(32).collect() };
    match event.extension(name) {
        None => Ok(None),
        Some(ExtensionValue::Integer(i)) if *i >= 0 => Ok(Some(*i)),
        Some(ExtensionValue::String(s)) => match s.parse::<i64>() {
            Ok(i) if i >= 0 => Ok(Some(i)),
            _ => Err(bad(s.clone())),
        },
        Some(other) => Err(bad(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::Clima;

    fn tweet() -> Tweet {
        Tweet::new("Hoy llueve", "Perú", Some("lluvioso")).unwrap()
    }

    #[test]
    fn a_keyed_id_is_the_key_and_the_tweet_and_a_keyless_one_is_fresh() {
        let other = Tweet::new("Hoy llueve mucho", "Perú", Some("lluvioso")).unwrap();
        let id = tweet_id(Some("k-1"), &tweet());
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(id, tweet_id(Some("k-1"), &Tweet::new(" Hoy llueve ", "peru", Some("lluvioso")).unwrap()));
        assert_ne!(id, tweet_id(Some("k-1"), &other));
        assert_ne!(id, tweet_id(Some("k-2"), &tweet()));
        // Not the id of the key alone, which every body of one key shared.
        assert_ne!(id.to_string(), event_id("k-1"));
        let fresh = tweet_id(None, &tweet());
        assert_eq!(fresh.get_version_num(), 7);
        assert_ne!(fresh, tweet_id(None, &tweet()));
    }

    #[test]
    fn our_event_reads_back() {
        let event = tweet_event("id-1", "/weather/producer", &tweet());
        let r = Received::from_event(&event).unwrap();
        assert_eq!((r.id.as_str(), &r.tweet, r.position, r.trace_id), ("id-1", &tweet(), None, None));
        assert_eq!((r.tweet.pais, r.tweet.pais_codigo, r.tweet.clima), ("Perú", "PE", Clima::Lluvioso));
    }

    #[test]
    fn the_code_in_an_event_is_derived_from_pais_not_read() {
        let event = EventBuilderV10::new()
            .id("x")
            .ty(TWEET_TYPE)
            .source("s")
            .data("application/json", br#"{"texto":"sol","pais":"Chile","pais_codigo":"PE"}"#.to_vec())
            .build()
            .unwrap();
        let r = Received::from_event(&event).unwrap();
        assert_eq!((r.tweet.pais, r.tweet.pais_codigo), ("Chile", "CL"));
        let unknown = EventBuilderV10::new()
            .id("x")
            .ty(TWEET_TYPE)
            .source("s")
            .data(
                "application/json",
                serde_json::json!({"texto": "sol", "pais": "Atlantis", "pais_codigo": "AT"}),
            )
            .build()
            .unwrap();
        assert!(
            matches!(Received::from_event(&unknown), Err(EventError::Tweet(e)) if e.field == Some("pais"))
        );
    }

    #[test]
    fn knative_extensions_give_the_position_and_wrapped_bytes_are_parsed() {
        let event = EventBuilderV10::new()
            .id("partition:2/offset:41")
            .ty(KAFKA_EVENT_TYPE)
            .source("/apis/v1/namespaces/default/kafkasources/counter#messages")
            .data("application/json", br#"{"texto":"sol","pais":"chile"}"#.to_vec())
            .extension(PARTITION_EXTENSION, "2")
            .extension(OFFSET_EXTENSION, 41i64)
            .extension("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
            .build()
            .unwrap();
        let r = Received::from_event(&event).unwrap();
        assert_eq!(r.position, Some(Position { partition: 2, offset: 41 }));
        assert_eq!((r.tweet.pais, r.tweet.pais_codigo), ("Chile", "CL"));
        assert_eq!(r.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn foreign_types_bad_data_and_bad_extensions_are_errors() {
        let base = || {
            EventBuilderV10::new()
                .id("x")
                .ty(TWEET_TYPE)
                .source("s")
                .data("application/json", serde_json::json!({"texto":"a","pais":"Chile"}))
        };
        let wrong_type = base().ty("com.example.other").build().unwrap();
        assert!(matches!(Received::from_event(&wrong_type), Err(EventError::Type(_))));
        let no_data = EventBuilderV10::new().id("x").ty(TWEET_TYPE).source("s").build().unwrap();
        assert!(matches!(Received::from_event(&no_data), Err(EventError::NoData)));
        let bad_tweet = base().data("application/json", serde_json::json!({"texto": 1})).build().unwrap();
        assert!(matches!(Received::from_event(&bad_tweet), Err(EventError::Tweet(_))));
        let duplicate =
            base().data("application/json", br#"{"texto":"a","pais":"Chile","pais":"Peru"}"#.to_vec());
        let duplicate = duplicate.build().unwrap();
        assert!(
            matches!(Received::from_event(&duplicate), Err(EventError::Tweet(e)) if e.message.starts_with("duplicate key"))
        );
        let bad_ext =
            base().extension(OFFSET_EXTENSION, "-3").extension(PARTITION_EXTENSION, "0").build().unwrap();
        assert!(matches!(Received::from_event(&bad_ext), Err(EventError::Extension { .. })));
    }
}
