//! Property tests of the tweet parser, the country resolver and the sinks' event reading:
//! nothing panics, what is refused is a client error, and what is accepted survives the
//! CloudEvent unchanged.

use crate::{
    country,
    event::{KAFKA_EVENT_TYPE, OFFSET_EXTENSION, PARTITION_EXTENSION, Received, TWEET_TYPE, tweet_event},
    testing::{bytes, json, spelling, tweet_body},
    tweet::Tweet,
};
use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue},
    response::IntoResponse,
};
use cloudevents::{EventBuilder, EventBuilderV10};
use proptest::prelude::*;
use std::collections::HashSet;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// What every accepted tweet must satisfy: a canonical country, and the same tweet again after
/// JSON and after the CloudEvent the producer writes and a sink reads.
fn assert_round_trips(tweet: &Tweet) -> Result<(), TestCaseError> {
    let c = tweet.country();
    prop_assert_eq!((tweet.pais, tweet.pais_codigo), (c.es, c.alpha2));
    prop_assert_eq!(&Tweet::from_json(&serde_json::to_vec(tweet).unwrap()).unwrap(), tweet);
    let event = tweet_event("id-1", "/weather/producer", tweet);
    let received = Received::from_event(&event).unwrap();
    prop_assert_eq!(&received.tweet, tweet);
    prop_assert_eq!(received.id, "id-1");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(body in bytes()) {
        if let Ok(tweet) = Tweet::from_json(&body) {
            assert_round_trips(&tweet)?;
        }
    }

    #[test]
    fn arbitrary_json_is_read_alike_from_bytes_and_from_a_map(value in json()) {
        let from_bytes = Tweet::from_json(value.to_string().as_bytes());
        if let serde_json::Value::Object(map) = &value {
            // A serde_json map has no duplicate keys, so both paths must agree.
            prop_assert_eq!(&from_bytes, &Tweet::from_map(map));
        } else {
            prop_assert!(from_bytes.is_err());
        }
        if let Ok(tweet) = from_bytes {
            assert_round_trips(&tweet)?;
        }
    }

    #[test]
    fn tweet_shaped_bodies_are_accepted_only_without_duplicate_keys((body, pairs) in tweet_body()) {
        let mut seen = HashSet::new();
        let duplicated = pairs.iter().any(|(k, _)| !seen.insert(k.as_str()));
        match Tweet::from_json(body.as_bytes()) {
            Ok(tweet) => {
                prop_assert!(!duplicated, "accepted despite a duplicate key: {}", body);
                assert_round_trips(&tweet)?;
            }
            Err(e) => {
                prop_assert!(!duplicated || e.message.starts_with("duplicate key"), "{}: {}", body, e);
                prop_assert!(e.message.len() < 1024);
            }
        }
    }

    #[test]
    fn perturbed_spellings_resolve_to_their_country((expected, s) in spelling()) {
        prop_assert_eq!(country::resolve(&s), Some(expected), "{:?}", s);
        let tweet = Tweet::new("Hoy llueve", &s, None).unwrap();
        prop_assert_eq!((tweet.pais, tweet.pais_codigo), (expected.es, expected.alpha2));
    }

    #[test]
    fn any_delivered_event_is_read_or_refused_never_a_panic(
        ty in prop_oneof![Just(TWEET_TYPE.to_owned()), Just(KAFKA_EVENT_TYPE.to_owned()), "[a-z.]{0,20}"],
        data in prop_oneof![
            bytes().prop_map(Data::Bytes),
            json().prop_map(Data::Json),
            tweet_body().prop_map(|(body, _)| Data::Text(body)),
        ],
        partition in proptest::option::of(prop_oneof!["-?[0-9]{1,12}", any::<String>()]),
        offset in proptest::option::of(prop_oneof![any::<i64>().prop_map(|i| i.to_string()), any::<String>()]),
        traceparent in proptest::option::of(any::<String>()),
    ) {
        let mut builder = EventBuilderV10::new().id("x").ty(ty).source("/s");
        builder = match data {
            Data::Bytes(b) => builder.data("application/json", b),
            Data::Json(v) => builder.data("application/json", v),
            Data::Text(s) => builder.data("application/json", s),
        };
        for (name, value) in [(PARTITION_EXTENSION, partition), (OFFSET_EXTENSION, offset), ("traceparent", traceparent)] {
            if let Some(value) = value {
                builder = builder.extension(name, value);
            }
        }
        if let Ok(event) = builder.build()
            && let Ok(received) = Received::from_event(&event)
        {
            assert_round_trips(&received.tweet)?;
            prop_assert!(received.position.is_none_or(|p| p.partition >= 0 && p.offset >= 0));
        }
    }

    #[test]
    fn any_request_to_a_sink_is_read_or_a_4xx(
        headers in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "ce-specversion", "ce-id", "ce-type", "ce-source", "content-type", "ce-time",
                    "ce-knativekafkapartition", "ce-knativekafkaoffset", "ce-traceparent",
                ]),
                prop_oneof!["1.0", "[ -~]{0,40}", Just(TWEET_TYPE.to_owned()), Just("application/json".to_owned())],
            ),
            0..9,
        ),
        body in prop_oneof![bytes(), tweet_body().prop_map(|(b, _)| b.into_bytes())],
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.insert(HeaderName::from_static(name), value);
            }
        }
        match crate::sink::read(&map, Ok(Bytes::from(body))) {
            Ok(received) => assert_round_trips(&received.tweet)?,
            Err(rejected) => {
                let status = rejected.into_response().status();
                prop_assert!(status.is_client_error(), "{}", status);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Data {
    Bytes(Vec<u8>),
    Json(serde_json::Value),
    Text(String),
}
