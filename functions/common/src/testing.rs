//! Proptest strategies for the tweet contract, shared by this crate's property tests and those of
//! the functions (feature `testing`, dev-dependencies only): arbitrary bytes, arbitrary JSON, and
//! bodies shaped like tweets — real country spellings perturbed the ways clients perturb them,
//! optional and duplicate keys — so that the accepting paths are exercised as well as the
//! rejecting ones; and [`subscriber_without_exporter`], `init`'s tracing without an exporter.

use crate::country::{self, Country};
use proptest::prelude::*;
use serde_json::Value;
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

/// Any bytes, up to 512.
pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..512)
}

/// A short string that is sometimes one of the contract's words.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
        1 => prop::sample::select(vec!["texto", "pais", "país", "clima", "pais_codigo", "soleado", "Perú", "PE", ""])
            .prop_map(str::to_owned),
    ]
}

/// Arbitrary JSON values, a few levels deep, with keys that are often the contract's.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A country and one of its code or short-name spellings, perturbed: per-character case,
/// accents dropped, fullwidth letters, format characters (soft hyphen, zero-width space and
/// joiner, word joiner, variation selector) inserted, spaces around.
pub fn spelling() -> impl Strategy<Value = (&'static Country, String)> {
    let countries = country::all();
    (
        0..countries.len(),
        0..4usize,
        any::<bool>(),
        proptest::collection::vec((any::<bool>(), any::<bool>(), 0..8usize), 0..64),
        any::<bool>(),
    )
        .prop_map(move |(i, which, strip_accents, per_char, pad)| {
            let c = &countries[i];
            let base = [c.alpha2, c.alpha3, c.es, c.en][which];
            let base: String = if strip_accents {
                base.nfd().filter(|&ch| !is_combining_mark(ch)).collect()
            } else {
                base.to_owned()
            };
            const FORMAT: [char; 5] = ['\u{ad}', '\u{200b}', '\u{200d}', '\u{2060}', '\u{fe0f}'];
            let mut out = String::new();
            for (k, ch) in base.chars().enumerate() {
                let (upper, fullwidth, insert) = per_char.get(k).copied().unwrap_or((false, false, 7));
                let mut cased = if upper { ch.to_uppercase().collect::<Vec<_>>() } else { vec![ch] };
                if cased.len() != 1 {
                    cased = vec![ch];
                }
                let ch = cased[0];
                let ch = if fullwidth && ch.is_ascii_alphanumeric() {
                    char::from_u32(ch as u32 + 0xFEE0).unwrap_or(ch)
                } else {
                    ch
                };
                out.push(ch);
                if let Some(&f) = FORMAT.get(insert) {
                    out.push(f);
                }
            }
            (c, if pad { format!(" \t{out} ") } else { out })
        })
}

/// A JSON object written out pair by pair (so a key may repeat), shaped like a tweet: `texto`,
/// `pais` or `país` (a perturbed real spelling, or any word), maybe `clima`, maybe extra fields,
/// maybe a repeated key. Returns the body and its pairs.
pub fn tweet_body() -> impl Strategy<Value = (String, Vec<(String, Value)>)> {
    let texto = prop_oneof![
        3 => "[a-zA-Z ñáéíóú]{1,60}".prop_map(Value::from),
        1 => json(),
    ];
    let pais = prop_oneof![
        4 => spelling().prop_map(|(_, s)| Value::from(s)),
        1 => json(),
    ];
    let clima = prop_oneof![
        3 => prop::sample::select(vec!["soleado", "NUBLADO", " lluvioso ", "tormenta", "desconocido", "caluroso"])
            .prop_map(Value::from),
        1 => json(),
    ];
    (
        texto,
        any::<bool>(),
        pais,
        proptest::option::of(clima),
        proptest::collection::vec((word(), json()), 0..3),
        proptest::option::weighted(0.15, 0..8usize),
    )
        .prop_map(|(texto, accented, pais, clima, extra, repeat)| {
            let mut pairs = vec![
                ("texto".to_owned(), texto),
                ((if accented { "país" } else { "pais" }).to_owned(), pais),
            ];
            pairs.extend(clima.map(|c| ("clima".to_owned(), c)));
            pairs.extend(extra);
            if let Some(r) = repeat {
                let again = pairs[r % pairs.len()].clone();
                pairs.push(again);
            }
            let body = format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            (body, pairs)
        })
}

/// The subscriber `telemetry::init` installs when nothing is exported, without its logs: spans
/// that carry the incoming trace context on unchanged. Install it as a test binary's global
/// default before its first request: tracing caches each callsite's interest, so a thread's own
/// default can lose to a parallel test that met the same span first without one.
pub fn subscriber_without_exporter() -> impl tracing::Subscriber + Send + Sync {
    use tracing_subscriber::layer::SubscriberExt;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    tracing_subscriber::registry().with(crate::telemetry::traces("test", None))
}
