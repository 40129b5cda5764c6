//! Log-level budgets end to end: batches downsampled by level and rewritten, the 202 answer
//! when nothing is left, compressed batches, bombs, bad encodings, malformed batches, the
//! verbosity clamp and the records metrics.
//!
//! Rates are per minute with small bursts, so nothing refills during a test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::io::Write;

use support::{
    TestGuard, TestUpstream, client, gunzip, gzip, header, json, metric_value, policy_with_route,
};

const TELEMETRY: &str = r#"  - name: telemetry
    match: { methods: [POST], path_prefix: /telemetry }
    records:
      format: ndjson
      levels:
        trace: drop
        debug: drop
        info: { rate: 2/m, burst: 2 }
        warn: { rate: 60/m, burst: 5, per: client }
        error: keep
      unknown_level: info
"#;

async fn post(g: &TestGuard, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .post(format!("{}{path}", g.url))
        .header("x-vehicle-id", "car-1")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn lines(body: &[u8]) -> Vec<String> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_ndjson_batch_is_downsampled_by_level_and_rewritten_byte_for_byte() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(TELEMETRY), &up.url).await;
    let kept = [
        r#"{"level":"error","msg":"brake fault"}"#,
        r#"{"ts":1,"level":"info","msg":"a"}"#,
        r#"{ "msg" : "b" , "level" : "INFO" }"#,
        // A level inside a string and inside a nested object must not count: this is warn.
        r#"{"msg":"\"level\":\"error\"","ctx":{"level":"error"},"level":"W"}"#,
    ];
    let batch = [
        kept[0],
        r#"{"level":"trace","msg":"tick"}"#,
        kept[1],
        kept[2],
        r#"{"level":"info","msg":"c: over the info rate"}"#,
        kept[3],
        r#"{"level":"debug","msg":"noise"}"#,
        "",
        // Unreadable: the unknown level (info), which is spent by now.
        r#"{"level":"error", oops"#,
        // No level: the unknown level too.
        r#"{"lvl":"warn"}"#,
    ]
    .join("\n");
    let resp = post(&g, "/telemetry", batch).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "4"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "5"
    );
    // info ran out of budget in this batch, so the most verbose level accepted whole is warn.
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-max-level"),
        "warn"
    );

    let seen = up.next_request().await;
    assert_eq!(lines(&seen.body), kept);
    assert_eq!(header(&seen.headers, "x-verbosity-guard-records-kept"), "4");
    assert_eq!(
        header(&seen.headers, "x-verbosity-guard-records-dropped"),
        "5"
    );
    assert_eq!(
        header(&seen.headers, "content-length"),
        seen.body.len().to_string()
    );

    let text = g.scrape().await;
    let m = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("route", "telemetry")];
        all.extend_from_slice(labels);
        metric_value(&text, name, &all).unwrap_or(0.0)
    };
    let received = "verbosity_guard_records_received_total";
    assert_eq!(m(received, &[("level", "info")]), 5.0);
    assert_eq!(m(received, &[("level", "warn")]), 1.0);
    let forwarded = "verbosity_guard_records_forwarded_total";
    assert_eq!(m(forwarded, &[("level", "info")]), 2.0);
    let dropped = "verbosity_guard_records_dropped_total";
    assert_eq!(m(dropped, &[("level", "info"), ("reason", "rate")]), 3.0);
    assert_eq!(
        m(dropped, &[("level", "trace"), ("reason", "drop_rule")]),
        1.0
    );
    assert_eq!(
        m(dropped, &[("level", "debug"), ("reason", "drop_rule")]),
        1.0
    );
    assert_eq!(m("verbosity_guard_records_malformed_total", &[]), 1.0);
    assert_eq!(
        m("verbosity_guard_batches_total", &[("outcome", "rewritten")]),
        1.0
    );
    let bytes = "verbosity_guard_record_bytes_forwarded_total";
    assert_eq!(m(bytes, &[("level", "error")]), kept[0].len() as f64);
    let dropped_bytes = "verbosity_guard_record_bytes_dropped_total";
    assert_eq!(
        m(
            dropped_bytes,
            &[("level", "trace"), ("reason", "drop_rule")]
        ),
        r#"{"level":"trace","msg":"tick"}"#.len() as f64
    );
    assert_eq!(
        m(dropped_bytes, &[("level", "info"), ("reason", "rate")]),
        [
            r#"{"level":"info","msg":"c: over the info rate"}"#,
            r#"{"level":"error", oops"#,
            r#"{"lvl":"warn"}"#,
        ]
        .iter()
        .map(|r| r.len() as f64)
        .sum::<f64>()
    );
}

#[tokio::test]
async fn a_batch_that_loses_nothing_goes_upstream_as_sent() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(TELEMETRY), &up.url).await;
    // No trailing newline, CRLF, blank lines: all preserved when nothing is dropped.
    let batch = "{\"level\":\"error\"}\r\n\n{\"level\":\"warn\"}";
    let resp = post(&g, "/telemetry", batch).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "0"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-max-level"),
        "info"
    );
    assert_eq!(&up.next_request().await.body[..], batch.as_bytes());
    assert_eq!(
        g.metric(
            "verbosity_guard_batches_total",
            &[("route", "telemetry"), ("outcome", "untouched")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_batch_with_nothing_left_is_answered_202_without_calling_the_upstream() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(TELEMETRY), &up.url).await;
    let batch = "{\"level\":\"debug\"}\n{\"level\":\"trace\"}\n{\"level\":\"debug\"}\n";
    let resp = post(&g, "/telemetry", batch).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "0"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "3"
    );
    let body = json(resp).await;
    assert_eq!(body["status"], "all_dropped");
    assert_eq!(body["received"], 3);
    assert_eq!(body["dropped_by_level"]["debug"], 2);
    assert_eq!(body["dropped_by_level"]["trace"], 1);
    // The upstream saw nothing: the next request it records is this one.
    post(&g, "/other", "marker").await;
    assert_eq!(up.next_request().await.target, "/other");
    assert_eq!(
        g.metric(
            "verbosity_guard_requests_total",
            &[("route", "telemetry"), ("outcome", "all_dropped")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_json_array_batch_is_rewritten_as_a_valid_array() {
    let up = TestUpstream::start().await;
    let route = TELEMETRY.replace("format: ndjson", "format: json-array");
    let g = TestGuard::start(&policy_with_route(&route), &up.url).await;
    let batch = r#"[ {"level":"error","a":[1,{"level":"debug"}]} , {"level":"debug"},{"level":"warn","msg":"]"} ]"#;
    let resp = post(&g, "/telemetry", batch).await;
    assert_eq!(resp.status(), 200);
    let seen = up.next_request().await;
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        r#"[{"level":"error","a":[1,{"level":"debug"}]},{"level":"warn","msg":"]"}]"#
    );
    serde_json::from_slice::<serde_json::Value>(&seen.body).unwrap();
}

#[tokio::test]
async fn compressed_batches_are_filtered_and_re_encoded_the_same_way() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(TELEMETRY), &up.url).await;
    let batch =
        "{\"level\":\"error\",\"n\":1}\n{\"level\":\"debug\"}\n{\"level\":\"warn\",\"n\":2}\n";
    let want = "{\"level\":\"error\",\"n\":1}\n{\"level\":\"warn\",\"n\":2}\n";
    for (encoding, packed) in [
        ("gzip", gzip(batch.as_bytes())),
        ("zstd", zstd::bulk::compress(batch.as_bytes(), 3).unwrap()),
    ] {
        let resp = client()
            .post(format!("{}/telemetry", g.url))
            .header("content-encoding", encoding)
            .body(packed)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{encoding}");
        assert_eq!(
            header(resp.headers(), "x-verbosity-guard-records-kept"),
            "2"
        );
        let seen = up.next_request().await;
        assert_eq!(header(&seen.headers, "content-encoding"), encoding);
        let plain = match encoding {
            "gzip" => gunzip(&seen.body),
            _ => zstd::bulk::decompress(&seen.body, 1 << 20).unwrap(),
        };
        assert_eq!(std::str::from_utf8(&plain).unwrap(), want, "{encoding}");
        assert_eq!(
            g.metric(
                "verbosity_guard_decoded_bodies_total",
                &[("route", "telemetry"), ("encoding", encoding)]
            )
            .await,
            1.0
        );
    }
}

#[tokio::test]
async fn a_decompression_bomb_gets_413_and_bad_encodings_get_415_or_400() {
    let up = TestUpstream::start().await;
    let route =
        format!("{TELEMETRY}      max_decoded: 1MiB\n    payload: {{ max_body: 256KiB }}\n");
    let g = TestGuard::start(&policy_with_route(&route), &up.url).await;
    // 64 MiB of one repeated line compresses to about 64 KiB.
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let line = b"{\"level\":\"debug\",\"msg\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n";
        for _ in 0..(64 << 20) / line.len() {
            e.write_all(line).unwrap();
        }
        e.finish().unwrap()
    };
    assert!(bomb.len() < 256 << 10, "bomb is {} bytes", bomb.len());
    let send = |encoding: &'static str, body: Vec<u8>| {
        client()
            .post(format!("{}/telemetry", g.url))
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    let resp = send("gzip", bomb).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body = json(resp).await;
    assert_eq!(body["error"], "decoded_too_large");
    assert_eq!(body["limit"], 1 << 20);

    let resp = send("br", b"whatever".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(json(resp).await["error"], "unsupported_encoding");
    let resp = send("gzip, zstd", b"whatever".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 415);
    let resp = send("gzip", b"not gzip at all".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(json(resp).await["error"], "corrupt_body");

    // None of them reached the upstream.
    post(&g, "/other", "marker").await;
    assert_eq!(up.next_request().await.target, "/other");
    assert_eq!(
        g.metric(
            "verbosity_guard_rejections_total",
            &[("route", "telemetry"), ("reason", "decoded_too_large")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn malformed_batches_are_forwarded_untouched_or_rejected_per_route() {
    let up = TestUpstream::start().await;
    let reject = TELEMETRY
        .replace("name: telemetry", "name: strict")
        .replace("path_prefix: /telemetry", "path_prefix: /strict")
        + "      on_malformed: reject\n";
    let routes = format!("{TELEMETRY}{reject}");
    let g = TestGuard::start(&policy_with_route(&routes), &up.url).await;
    let garbage = "this is not json\nnor is this\n";

    // A client cannot pass its own counts off as the guard's.
    let resp = client()
        .post(format!("{}/telemetry", g.url))
        .header("x-verbosity-guard-records-kept", "999")
        .header("x-verbosity-guard-max-level", "trace")
        .body(garbage)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("x-verbosity-guard-records-kept")
            .is_none()
    );
    let seen = up.next_request().await;
    assert_eq!(&seen.body[..], garbage.as_bytes());
    assert!(seen.headers.get("x-verbosity-guard-records-kept").is_none());
    assert!(seen.headers.get("x-verbosity-guard-max-level").is_none());

    let resp = post(&g, "/strict", garbage).await;
    assert_eq!(resp.status(), 400);
    let body = json(resp).await;
    assert_eq!(body["error"], "malformed_batch");
    assert!(
        body["detail"].as_str().unwrap().contains("ndjson"),
        "{body}"
    );
    for (route, outcome) in [
        ("telemetry", "malformed_forwarded"),
        ("strict", "malformed_rejected"),
    ] {
        assert_eq!(
            g.metric(
                "verbosity_guard_batches_total",
                &[("route", route), ("outcome", outcome)]
            )
            .await,
            1.0,
            "{route}"
        );
    }
}

#[tokio::test]
async fn the_verbosity_clamp_lowers_a_requested_level() {
    let up = TestUpstream::start().await;
    let route = r#"  - name: config
    match: { path_prefix: /config }
    verbosity_clamp: { header: x-log-level, query: log_level, max: info }
"#;
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    let resp = client()
        .get(format!("{}/config?log_level=trace&x=1", g.url))
        .header("x-log-level", "debug")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.next_request().await;
    assert_eq!(seen.target, "/config?log_level=info&x=1");
    assert_eq!(header(&seen.headers, "x-log-level"), "info");

    client()
        .get(format!("{}/config?log_level=error", g.url))
        .header("x-log-level", "warn")
        .send()
        .await
        .unwrap();
    let seen = up.next_request().await;
    assert_eq!(seen.target, "/config?log_level=error");
    assert_eq!(header(&seen.headers, "x-log-level"), "warn");
    assert_eq!(
        g.metric(
            "verbosity_guard_verbosity_clamped_total",
            &[("route", "config")]
        )
        .await,
        2.0
    );
}
