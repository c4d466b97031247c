use super::*;
use axum::body::Body;
use http_body_util::BodyExt;
use std::collections::{BTreeMap, BTreeSet};
use tower::ServiceExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel of the Grafana dashboards the page mirrors is either on the page or listed as
/// not here with a reason, and every reference names a panel that exists.
#[test]
fn the_page_mirrors_every_panel_of_the_grafana_dashboards() {
    let panels = read_json(&root().join("tools/dashboard/panels.json"));
    let grafana = |file: &str| -> BTreeSet<String> {
        read_json(&root().join("grafana/dashboards").join(file))["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{file}: {}", p["title"].as_str().unwrap()))
            .collect()
    };
    let mut referenced: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for panel in panels["sections"].as_array().unwrap().iter().flat_map(|s| s["panels"].as_array().unwrap()) {
        assert!(ids.insert(panel["id"].as_str().unwrap()), "panel ids are unique: {panel}");
        for mirrored in panel["mirrors"].as_array().unwrap() {
            *referenced.entry(mirrored.as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    for absent in panels["not_here"].as_array().unwrap() {
        assert!(!absent["why"].as_str().unwrap().is_empty(), "{absent} says why");
        *referenced.entry(absent["panel"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    for reference in referenced.keys() {
        let (file, _) = reference.split_once(": ").unwrap();
        assert!(grafana(file).contains(reference), "{reference} is a panel of grafana/dashboards/{file}");
    }
    let mirrored: Vec<&str> =
        panels["mirrors"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(mirrored, ["tweets.json", "pipeline.json"]);
    for file in mirrored {
        for title in grafana(file) {
            assert_eq!(
                referenced.get(&title),
                Some(&1),
                "{title} is mirrored by the page or listed under not_here, once (tools/dashboard/panels.json)"
            );
        }
    }
}

fn stack() -> Stack {
    Stack {
        manifests: root().join("knative/base"),
        kafka_brokers: "127.0.0.1:9".into(),
        redis_url: "redis://127.0.0.1:9".into(),
        mongodb_uri: "mongodb://127.0.0.1:9".into(),
        run_id: Some("dashboard-test".into()),
    }
}

fn args() -> DashboardArgs {
    DashboardArgs {
        addr: DashboardAddr { addr: "127.0.0.1:0".parse().unwrap() },
        base_port: 9,
        jaeger_url: format!("http://127.0.0.1:{}", testkit::closed_port()),
        assets: root().join("tools/dashboard"),
        energy_reports: vec![root().join("loadtest/results")],
    }
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String, Vec<u8>) {
    let answer =
        app.clone().oneshot(axum::http::Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let kind = answer.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
    let status = answer.status();
    (status, kind.unwrap_or_default(), answer.into_body().collect().await.unwrap().to_bytes().to_vec())
}

/// Needs the page's libraries (`dev/stack install` runs `npm ci`); no service.
#[tokio::test]
async fn serves_the_page_its_libraries_and_the_countries_and_nothing_else() {
    let app = router(&stack(), &args()).expect("the page's libraries are installed (`dev/stack install`)");
    for (path, _, kind) in FILES {
        let (status, served, body) = get(&app, path).await;
        assert_eq!((status, served.as_str()), (StatusCode::OK, *kind), "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, kind, body) = get(&app, "/trace/0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, HTML));
    assert!(String::from_utf8(body).unwrap().contains("trace.js"));
    for outside in ["/package.json", "/node_modules/echarts/package.json", "/../Cargo.toml", "/check.mjs"] {
        assert_eq!(get(&app, outside).await.0, StatusCode::NOT_FOUND, "{outside}");
    }

    let (status, _, body) = get(&app, "/api/countries").await;
    assert_eq!(status, StatusCode::OK);
    let countries: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(countries.len(), 249);
    let peru = countries.iter().find(|c| c["alpha2"] == "PE").unwrap();
    assert_eq!((&peru["numeric"], &peru["es"]), (&"604".into(), &"Perú".into()));

    let (status, _, body) = get(&app, "/health").await;
    assert_eq!(status, StatusCode::OK);
    let identity: Identity = serde_json::from_slice(&body).unwrap();
    assert_eq!(identity, Identity { run_id: Some("dashboard-test".into()), base_port: 9 });
}

#[tokio::test]
async fn a_trace_id_is_hexadecimal_and_a_missing_jaeger_is_a_bad_gateway() {
    let app = router(&stack(), &args()).unwrap();
    for bad in ["xyz", "0af7651916cd43dd8448eb211c80319c0", "..%2F..%2Fapi"] {
        let (status, _, body) = get(&app, &format!("/api/trace/{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, body) = get(&app, "/api/trace/0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8(body).unwrap().contains("Jaeger"));
    assert_eq!(get(&app, "/api/traces").await.0, StatusCode::BAD_GATEWAY);
}

/// Needs the stack's Jaeger (`dev/stack up`).
#[tokio::test]
async fn a_trace_jaeger_does_not_have_is_not_found() {
    let jaeger_url = format!("http://127.0.0.1:{}", testkit::env_or("JAEGER_UI_PORT", "16686"));
    let app = router(&stack(), &DashboardArgs { jaeger_url, ..args() }).unwrap();
    let (status, _, body) = get(&app, "/api/trace/00000000000000000000000000000001").await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("Jaeger has no trace"), "{body}");
    let (status, _, body) = get(&app, "/api/traces").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let lists: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(lists["recent"], serde_json::json!([]), "no tweet of this run was traced");
}

#[tokio::test]
async fn the_energy_panel_reads_the_newest_report() {
    let app = router(&stack(), &args()).unwrap();
    let (status, _, body) = get(&app, "/api/energy").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let energy: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let modes: Vec<&str> =
        energy["modes"].as_array().unwrap().iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["always-on", "scale-to-zero"]);
    for mode in energy["modes"].as_array().unwrap() {
        let components = mode["energy_j"].as_object().unwrap();
        assert!(
            ["ingest", "producer", "counter", "archiver", "kafka"]
                .iter()
                .all(|c| components.contains_key(*c))
        );
        assert!(mode["total_j"].as_f64().unwrap() > 0.0);
    }

    let empty = std::env::temp_dir().join(testkit::unique("no-reports"));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(energy::latest(std::slice::from_ref(&empty)).unwrap().is_none());
    std::fs::write(
        empty.join("report.json"),
        r#"{"modes": [{"mode": "m", "energy_j": {"a": 1.5, "b": 2}}]}"#,
    )
    .unwrap();
    let newest = energy::latest(&[root().join("loadtest/results"), empty.clone()]).unwrap().unwrap();
    assert_eq!(newest.report, empty.join("report.json"), "the newest report wins");
    assert_eq!(newest.modes[0].total_j, 3.5);
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn summarises_a_jaeger_search() {
    let json = serde_json::json!({"data": [
        {"traceID": "a1", "processes": {"p1": {"serviceName": "ingest"}, "p2": {"serviceName": "counter"}},
         "spans": [
            {"spanID": "2", "startTime": 1_000_500, "duration": 9_500, "operationName": "POST /", "processID": "p2"},
            {"spanID": "1", "startTime": 1_000_000, "duration": 2_000, "operationName": "POST /input", "processID": "p1"}
         ]},
        {"traceID": "b2", "processes": {"p1": {"serviceName": "ingest"}},
         "spans": [{"spanID": "3", "startTime": 2_000_000, "duration": 1_000, "operationName": "POST /input", "processID": "p1"}]},
        {"traceID": "c3", "spans": []}
    ]});
    let summaries = traces::summaries(&json);
    assert_eq!(
        summaries[0],
        traces::Summary {
            trace_id: "a1".into(),
            start_ms: 1000.0,
            duration_ms: 10.0,
            spans: 2,
            services: vec!["counter".into(), "ingest".into()],
            root: "POST /input".into(),
        }
    );
    assert_eq!((summaries[1].trace_id.as_str(), summaries[1].duration_ms), ("b2", 1.0));
    assert_eq!(summaries.len(), 2, "a trace without spans is left out");
    assert!(traces::is_trace_id("0af7651916cd43dd8448eb211c80319c") && traces::is_trace_id("f"));
    assert!(!traces::is_trace_id("") && !traces::is_trace_id("0x1") && !traces::is_trace_id(&"a".repeat(33)));
}

#[test]
fn the_live_series_keeps_the_last_fifteen_minutes() {
    let state = State::new(&stack()).unwrap();
    let mut sampler = Sampler {
        live: Live::new(state, "http://127.0.0.1:9/metrics".into()).unwrap(),
        latest: None,
        points: VecDeque::new(),
        next_seq: 1,
    };
    for i in 0..HISTORY as i64 + 5 {
        let mut snapshot = crate::state::Snapshot::default();
        snapshot.counted.total = i;
        sampler.push(Reading { t_ms: i, snapshot, runner: None });
    }
    assert_eq!(sampler.points.len(), HISTORY);
    assert_eq!(sampler.points.front().map(|p| (p.seq, p.counted)), Some((6, 5)));
    assert_eq!(sampler.points.back().map(|p| p.seq), Some(HISTORY as u64 + 5));
    assert_eq!(sampler.latest.as_ref().map(|(_, r)| r.snapshot.counted.total), Some(HISTORY as i64 + 4));
}
