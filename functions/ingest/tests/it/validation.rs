//! Requests that never reach the producer: 400 naming the field, 413, 415, 404/405. The producer
//! behind these routers is unreachable, so anything that slipped through would answer 503.

use crate::{BODY_LIMIT, Reply, app_without_producer, closed_port_url, post_json, request, send};
use axum::http::{Method, StatusCode};
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
        // Control characters: none in `pais` (whitespace ones collapse to a space, see `publish`),
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
        (json!({"texto": "x", "pais": "a".repeat(57)}), "pais"),
        (json!({"texto": "x", "país": "é".repeat(57)}), "pais"),
    ];
    for (body, field) in too_long {
        assert_400(&post_json(&app, body.to_string()).await, Some(field), field);
    }
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
}

#[tokio::test]
async fn ten_thousand_distinct_invalid_countries_are_all_400() {
    let app = app_without_producer();
    for i in 0..10_000 {
        let pais = match i % 5 {
            0 => json!(format!("{i}{}", "x".repeat(60))),
            1 => json!(format!("País\u{7}{i}")),
            2 => json!(i),
            3 => json!([format!("País {i}")]),
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
async fn wrong_method_or_path_and_health() {
    let app = app_without_producer();
    let get = send(&app, request(Method::GET, "/input", None, "")).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let other = send(&app, request(Method::POST, "/tweets", Some("application/json"), "{}")).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    for probe in ["/health/readiness", "/health/liveness"] {
        assert_eq!(send(&app, request(Method::GET, probe, None, "")).await.status, StatusCode::OK, "{probe}");
    }
}
