//! Requests that never reach the producer: 400 naming the field (or the Idempotency-Key header),
//! 408, 413, 415, 404/405. The producer behind these routers is unreachable, so anything that
//! slipped through would answer 503.

use crate::{BODY_LIMIT, Reply, app_without_producer, closed_port_url, post_json, request, send};
use axum::http::{Method, StatusCode};
use common::tweet::MAX_PAIS_CHARS;
use serde_json::{Value, json};

#[track_caller]
fn assert_400(reply: &Reply, field: Option<&str>, case: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{case}: {}", reply.json);
    assert_eq!(reply.json["field"].as_str(), field, "{case}: {}", reply.json);
    assert!(reply.json["field"].is_null() || reply.json["field"].is_string(), "{case}");
    let error = reply.json["error"].as_str().unwrap_or_else(|| panic!("{case}: no error message"));
    assert!(!error.is_empty() && error.len() < 1024, "{case}: error of {} bytes", error.len());
}

#[tokio::test]
async fn invalid_tweets_are_400_naming_the_field() {
    let app = app_without_producer();
    let cases: &[(&str, Option<&str>)] = &[
        (r#"{"texto":"x","#, None),
        ("", None),
        ("null", None),
        (r#"["texto","pais"]"#, None),
        (r#""texto""#, None),
        (r#"{"texto":7,"pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":true,"pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":{"a":1},"pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"x","pais":["Chile"]}"#, Some("pais")),
        (r#"{"texto":"x","pais":3.5}"#, Some("pais")),
        (r#"{"texto":"x","pais":"Chile","clima":1}"#, Some("clima")),
        (r#"{"pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":null,"pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":" \n\t ","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"x"}"#, Some("pais")),
        (r#"{"texto":"x","pais":""}"#, Some("pais")),
        (r#"{"texto":"x","país":"   "}"#, Some("pais")),
        (r#"{"texto":"x","pais":"Chile","país":"Perú"}"#, Some("pais")),
        (r#"{"texto":"x","pais":"Chile","país":null}"#, Some("pais")),
        (r#"{"texto":"x","pais":"Chile","clima":"caluroso"}"#, Some("clima")),
        (r#"{"texto":"x","pais":"Chile","clima":""}"#, Some("clima")),
        (r#"{"texto":"x","pais":"Chile","clima":"soleado2"}"#, Some("clima")),
        // Not a country of ISO 3166-1 (nor a code, nor a spelling of one).
        (r#"{"texto":"x","pais":"Atlantis"}"#, Some("pais")),
        (r#"{"texto":"x","pais":"XX"}"#, Some("pais")),
        (r#"{"texto":"x","pais":"Inglaterra"}"#, Some("pais")),
        (r#"{"texto":"x","pais":"\u00ad\u200b"}"#, Some("pais")),
        // Duplicate keys, however spelled.
        (r#"{"texto":"x","pais":"Chile","pais":"Perú"}"#, Some("pais")),
        (r#"{"texto":"x","pais":"Chile","pa\u0069s":"Chile"}"#, Some("pais")),
        (r#"{"texto":"x","texto":"x","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"x","pais":"Chile","clima":"soleado","clima":"soleado"}"#, Some("clima")),
        (r#"{"texto":"x","pais":"Chile","origen":"a","origen":"b"}"#, None),
        // Control characters: none in `pais` (whitespace ones separate words, see `publish`),
        // only tab and newline in `texto`.
        (r#"{"texto":"x","pais":"Ch\u0007ile"}"#, Some("pais")),
        (r#"{"texto":"a\u0000b","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"a\u001bb","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"a\u007fb","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"a\u0085b","pais":"Chile"}"#, Some("texto")),
        (r#"{"texto":"a\rb","pais":"Chile"}"#, Some("texto")),
        // A lone surrogate is not a character.
        (r#"{"texto":"\ud800","pais":"Chile"}"#, None),
    ];
    for (body, field) in cases {
        assert_400(&post_json(&app, *body).await, *field, body);
    }

    let too_long = [
        (json!({"texto": "ñ".repeat(281), "pais": "Chile"}), "texto"),
        (json!({"texto": "x", "pais": "a".repeat(MAX_PAIS_CHARS + 1)}), "pais"),
        (json!({"texto": "x", "país": "é".repeat(MAX_PAIS_CHARS + 1)}), "pais"),
    ];
    for (body, field) in too_long {
        assert_400(&post_json(&app, body.to_string()).await, Some(field), field);
    }
}

#[tokio::test]
async fn errors_say_what_was_wrong() {
    let app = app_without_producer();
    let reply = post_json(&app, r#"{"texto":"x","pais":"Atlantis"}"#).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json["field"], "pais");
    let error = reply.json["error"].as_str().unwrap();
    assert!(error.starts_with(r#"pais "Atlantis" is not a country of ISO 3166-1"#), "{error}");

    let reply = post_json(&app, r#"{"texto":"x","pais":"Chile","pais":"Perú"}"#).await;
    assert_eq!((reply.status, reply.json["field"].as_str()), (StatusCode::BAD_REQUEST, Some("pais")));
    assert!(reply.json["error"].as_str().unwrap().starts_with(r#"duplicate key "pais""#), "{}", reply.json);
    let reply = post_json(&app, r#"{"texto":"x","pais":"Chile","origen":1,"origen":2}"#).await;
    assert!(reply.json["error"].as_str().unwrap().starts_with(r#"duplicate key "origen""#), "{}", reply.json);
}

#[tokio::test]
async fn hostile_bodies_are_400_not_a_crash() {
    let app = app_without_producer();
    let invalid_utf8 = b"{\"texto\":\"\xff\xfe\",\"pais\":\"Chile\"}".to_vec();
    assert_400(&post_json(&app, invalid_utf8).await, None, "invalid UTF-8 in a string");
    let invalid_utf8_key = b"{\"tex\xc0to\":\"x\",\"pais\":\"Chile\"}".to_vec();
    assert_400(&post_json(&app, invalid_utf8_key).await, None, "invalid UTF-8 in a key");
    assert_400(&post_json(&app, vec![0u8; 1000]).await, None, "NUL bytes");

    // Nesting within the default limit, and 100,000 levels with a limit large enough to parse
    // them: serde_json's recursion limit answers, the stack does not overflow.
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert_400(&post_json(&app, nested(8_000)).await, None, "8,000 levels");
    let nested_field =
        format!(r#"{{"texto":{}{},"pais":"Chile"}}"#, "{\"a\":".repeat(2_000), "}".repeat(2_000));
    assert_400(&post_json(&app, nested_field).await, None, "2,000 levels in a field");
    let roomy = crate::app(&closed_port_url(), 1024 * 1024);
    assert_400(&post_json(&roomy, nested(100_000)).await, None, "100,000 levels");

    // Huge strings just under the limit are measured and rejected without being echoed back.
    let huge = "x".repeat(BODY_LIMIT - 100);
    let reply = post_json(&app, json!({"texto": huge, "pais": "Chile"}).to_string()).await;
    assert_400(&reply, Some("texto"), "huge texto");
    let reply = post_json(&app, json!({"texto": "x", "pais": huge}).to_string()).await;
    assert_400(&reply, Some("pais"), "huge pais");
    let reply = post_json(&app, json!({"texto": "x", "pais": "Chile", "clima": huge}).to_string()).await;
    assert_400(&reply, Some("clima"), "huge clima");
    let many_fields: serde_json::Map<String, Value> =
        (0..1_000).map(|i| (format!("k{i}"), json!(i))).collect();
    assert_400(&post_json(&app, Value::Object(many_fields).to_string()).await, Some("texto"), "1,000 fields");
    // As many repeated keys as fit: the first repeat answers, whatever follows.
    let repeated = format!(r#"{{"texto":"x","pais":"Chile"{}}}"#, r#","k":1"#.repeat(2_500));
    assert_400(&post_json(&app, repeated).await, None, "2,500 repeats of one key");
    // Deep nesting in an ignored field is skipped without recursion, within the body limit.
    let deep = format!(r#"{{"texto":"x","pais":"Chile","m":{}{}}}"#, "[".repeat(8_000), "]".repeat(8_000));
    let reply = post_json(&app, deep).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "valid, so it reached the missing producer");
    // Format characters and fullwidth letters in `pais` are no way around the list.
    let sneaky = json!({"texto": "x", "pais": "Ａｔｌａｎ\u{ad}ｔｉｓ\u{200b}\u{fe0f}"}).to_string();
    assert_400(&post_json(&app, sneaky).await, Some("pais"), "fullwidth Atlantis");
}

#[tokio::test]
async fn ten_thousand_distinct_invalid_countries_are_all_400() {
    let app = app_without_producer();
    for i in 0..10_000 {
        let pais = match i % 6 {
            0 => json!(format!("{i}{}", "x".repeat(MAX_PAIS_CHARS))),
            1 => json!(format!("País\u{7}{i}")),
            2 => json!(i),
            3 => json!([format!("País {i}")]),
            4 => json!(format!("País {i} de la Prueba")),
            _ => json!({ "nombre": format!("País {i}") }),
        };
        let body = json!({"texto": "Hoy llueve", "pais": pais}).to_string();
        let reply = post_json(&app, body).await;
        assert_400(&reply, Some("pais"), &format!("country #{i}"));
    }
}

#[tokio::test]
async fn over_the_body_limit_is_413_with_a_json_body() {
    let app = app_without_producer();
    let body = json!({"texto": "x".repeat(BODY_LIMIT), "pais": "Chile"}).to_string();
    let reply = post_json(&app, body.clone()).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json["error"].is_string(), "{}", reply.json);

    // Declared up front, the length alone is enough.
    let declared = axum::http::Request::post("/input")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(axum::body::Body::from(body))
        .unwrap();
    assert_eq!(send(&app, declared).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(post_json(&app, nested).await.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn other_content_types_are_415() {
    let app = app_without_producer();
    let body = r#"{"texto":"x","pais":"Chile"}"#;
    for content_type in
        [Some("text/plain"), None, Some("application/jsonp"), Some("application/x-www-form-urlencoded")]
    {
        let reply = send(&app, request(Method::POST, "/input", content_type, body)).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
        assert!(reply.json["error"].is_string(), "{content_type:?}: {}", reply.json);
    }
    // Parameters and case do not matter: these get past the check (to the unreachable producer).
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let reply = send(&app, request(Method::POST, "/input", Some(content_type), body)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{content_type}");
    }
}

#[tokio::test]
async fn input_slash_and_root_are_the_same_endpoint() {
    let app = app_without_producer();
    for path in ingest::INPUT_PATHS {
        // Validated alike: an invalid tweet is 400 naming the field, a valid one reaches the
        // (missing) producer, another content type is 415.
        let invalid =
            send(&app, request(Method::POST, path, Some("application/json"), r#"{"texto":"x"}"#)).await;
        assert_400(&invalid, Some("pais"), path);
        let valid = r#"{"texto":"x","pais":"Chile"}"#;
        let reply = send(&app, request(Method::POST, path, Some("application/json"), valid)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let reply = send(&app, request(Method::POST, path, Some("text/plain"), valid)).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow_post_and_other_paths_404() {
    let app = app_without_producer();
    let methods = ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "M1", "PROPFIND"];
    for path in ingest::INPUT_PATHS {
        for method in methods {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let reply = send(&app, request(method.clone(), path, Some("application/json"), "{}")).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let allow = reply.headers.get("allow").map(|v| v.to_str().unwrap());
            assert_eq!(allow, Some("POST"), "{method} {path}");
            if method != Method::HEAD {
                assert_eq!(reply.json["error"], "only POST is allowed here", "{method} {path}");
            }
        }
    }
    for path in ["/tweets", "/input/x", "//input", "/inputs", "/INPUT", "/input//", "/health", "/health/x"] {
        for method in [Method::POST, Method::GET] {
            let reply = send(&app, request(method.clone(), path, Some("application/json"), "{}")).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(reply.json["error"], "no such endpoint; post tweets to /input", "{method} {path}");
        }
    }
}

#[tokio::test]
async fn probes_and_metrics_are_unchanged() {
    let app = app_without_producer();
    for probe in ["/health/readiness", "/health/liveness"] {
        let reply = send(&app, request(Method::GET, probe, None, "")).await;
        assert_eq!(reply.status, StatusCode::OK, "{probe}");
    }
    let metrics = send(&app, request(Method::GET, "/metrics", None, "")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let content_type = metrics.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
}

#[tokio::test]
async fn malformed_idempotency_keys_are_400_naming_the_header() {
    let app = app_without_producer();
    let too_long = "k".repeat(common::event::MAX_IDEMPOTENCY_KEY_BYTES + 1);
    let keys: [&[u8]; 7] =
        [b"", b" ", b"a b", b"tab\there", too_long.as_bytes(), b"\xc3\xb1and\xc3\xba", b"\x80\xff"];
    for key in keys {
        let request = axum::http::Request::post("/input")
            .header("content-type", "application/json")
            .header("idempotency-key", axum::http::HeaderValue::from_bytes(key).unwrap())
            .body(r#"{"texto":"x","pais":"Chile"}"#.into())
            .unwrap();
        let reply = send(&app, request).await;
        assert_400(&reply, Some("Idempotency-Key"), &format!("{key:?}"));
    }
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408_and_ends_the_connection() {
    use futures::StreamExt;
    crate::traced();
    let config = ingest::Config { body_read_timeout_ms: 200, ..crate::config(&closed_port_url()) };
    let app = ingest::router(ingest::AppState::new(&config).unwrap());
    // A declared length and a first chunk, then nothing more.
    let chunks =
        futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"texto\":"))])
            .chain(futures::stream::pending());
    let request = axum::http::Request::post("/input")
        .header("content-type", "application/json")
        .header("content-length", "16000")
        .body(axum::body::Body::from_stream(chunks))
        .unwrap();
    let started = std::time::Instant::now();
    let reply = send(&app, request).await;
    assert_eq!(reply.status, StatusCode::REQUEST_TIMEOUT, "{}", reply.json);
    assert_eq!(reply.json["error"], "the body did not arrive within 200 ms");
    assert_eq!(reply.headers["connection"], "close");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(200) && elapsed < std::time::Duration::from_secs(2),
        "{elapsed:?}"
    );
}
