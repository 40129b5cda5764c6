//! OTLP log batches end to end, through real sockets: `ExportLogsServiceRequest` in protobuf
//! and in JSON filtered by severity and rewritten around the kept records' original bytes, the
//! `ExportLogsServiceResponse` the guard answers with when it drops everything, compressed and
//! malformed batches, and the real OpenTelemetry Python SDK exporting through the guard.
//!
//! Rates are per minute, so nothing refills during a test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use prost::Message;
use serde::Deserialize;
use serde_json::value::RawValue;
use support::{
    TestGuard, TestUpstream, client, gunzip, gzip, header, json, metric_value, policy_with_route,
    require_program,
};
use verbosity_guard::records::otlp::fixtures::{record, resource, scope};
use verbosity_guard::records::otlp::proto::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, KeyValue, LogRecord, SeverityNumber,
    any_value,
};

const OTLP_PROTO: &str = r#"  - name: otlp
    match: { methods: [POST], path: /v1/logs }
    records:
      format: otlp-proto
      levels: { trace: drop, debug: drop, info: { rate: 2/m, burst: 2 }, warn: keep }
"#;

fn route(format: &str) -> String {
    OTLP_PROTO.replace("otlp-proto", format)
}

async fn post(
    g: &TestGuard,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", g.url))
        .header("x-vehicle-id", "car-1")
        .header("content-type", content_type);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.body(body).send().await.unwrap()
}

async fn post_proto(g: &TestGuard, path: &str, body: Vec<u8>) -> reqwest::Response {
    post(g, path, "application/x-protobuf", None, body).await
}

// ---- building OTLP requests with the proto types -------------------------------------------

// `record`, `scope` and `resource` are the library's `records::otlp::fixtures`, which its unit
// tests build with too.

/// Three resources at mixed severities, in the shape the tests below expect:
/// - `telematics`: `can-bus` (error, debug, info, trace), `gps` (debug, trace: all dropped),
///   `heartbeat` (no records at all, as sent);
/// - `infotainment`: `media` (text-only "WARNING", unspecified, info, fatal), `radio` (an info
///   written only as text "Information");
/// - `diagnostics`: only debug records.
///
/// Under [`OTLP_PROTO`]: trace and debug are dropped; info has 2 tokens, taken by the first two
/// info records in order (the `can-bus` info and the unspecified one, which is the unknown
/// level, info), so the last two infos are over the rate.
fn mixed_request() -> ExportLogsServiceRequest {
    use SeverityNumber::*;
    ExportLogsServiceRequest {
        resource_logs: vec![
            resource(
                "telematics",
                vec![
                    scope(
                        "can-bus",
                        vec![
                            record(1, Error, "ERROR"),
                            record(2, Debug, "DEBUG"),
                            record(3, Info, "INFO"),
                            record(4, Trace, "TRACE"),
                        ],
                    ),
                    scope(
                        "gps",
                        vec![record(5, Debug2, "DEBUG"), record(6, Trace2, "")],
                    ),
                    scope("heartbeat", Vec::new()),
                ],
            ),
            resource(
                "infotainment",
                vec![
                    scope(
                        "media",
                        vec![
                            record(7, Unspecified, "WARNING"),
                            record(8, Unspecified, ""),
                            record(9, Info2, "INFO"),
                            record(10, Fatal, "FATAL"),
                        ],
                    ),
                    scope("radio", vec![record(11, Unspecified, "Information")]),
                ],
            ),
            resource(
                "diagnostics",
                vec![scope(
                    "obd",
                    vec![record(12, Debug, "DEBUG"), record(13, Debug4, "")],
                )],
            ),
        ],
    }
}

/// What [`mixed_request`] must become: the kept records as they were, in order, without the
/// scopes and the resource the guard emptied, and with the scope that was already empty.
fn mixed_request_kept(sent: &ExportLogsServiceRequest) -> ExportLogsServiceRequest {
    let keep = |r: usize, s: usize, recs: &[usize]| {
        let mut sl = sent.resource_logs[r].scope_logs[s].clone();
        sl.log_records = recs
            .iter()
            .map(|&i| sent.resource_logs[r].scope_logs[s].log_records[i].clone())
            .collect();
        sl
    };
    let mut telematics = sent.resource_logs[0].clone();
    telematics.scope_logs = vec![keep(0, 0, &[0, 2]), keep(0, 2, &[])];
    let mut infotainment = sent.resource_logs[1].clone();
    infotainment.scope_logs = vec![keep(1, 0, &[0, 1, 3])];
    ExportLogsServiceRequest {
        resource_logs: vec![telematics, infotainment],
    }
}

fn decode_request(body: &[u8]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest::decode(body).expect("a valid protobuf ExportLogsServiceRequest")
}

// ---- otlp-proto --------------------------------------------------------------------------

#[tokio::test]
async fn an_otlp_proto_batch_is_filtered_by_severity_and_rewritten_around_the_kept_records() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(OTLP_PROTO), &up.url).await;
    let sent = mixed_request();
    let want = mixed_request_kept(&sent);

    let resp = post_proto(&g, "/v1/logs", sent.encode_to_vec()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "5"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "8"
    );
    // info ran over its rate; warn and up are kept whole.
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-max-level"),
        "warn"
    );

    let seen = up.next_request().await;
    assert_eq!(seen.target, "/v1/logs");
    assert_eq!(decode_request(&seen.body), want);
    // The records are the sender's bytes: re-encoding the expectation gives the same body.
    assert_eq!(&seen.body[..], &want.encode_to_vec()[..]);
    assert_eq!(
        header(&seen.headers, "content-type"),
        "application/x-protobuf"
    );
    assert_eq!(
        header(&seen.headers, "content-length"),
        seen.body.len().to_string()
    );
    assert_eq!(header(&seen.headers, "x-verbosity-guard-records-kept"), "5");
    assert_eq!(
        header(&seen.headers, "x-verbosity-guard-records-dropped"),
        "8"
    );
    assert!(
        seen.headers.get("x-verbosity-guard-max-level").is_none(),
        "the accepted level is for the client, not the upstream"
    );

    let text = g.scrape().await;
    let m = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("route", "otlp")];
        all.extend_from_slice(labels);
        metric_value(&text, name, &all).unwrap_or(0.0)
    };
    let received = "verbosity_guard_records_received_total";
    let forwarded = "verbosity_guard_records_forwarded_total";
    let dropped = "verbosity_guard_records_dropped_total";
    for (level, r, f) in [
        ("trace", 2.0, 0.0),
        ("debug", 4.0, 0.0),
        ("info", 4.0, 2.0),
        ("warn", 1.0, 1.0),
        ("error", 1.0, 1.0),
        ("fatal", 1.0, 1.0),
    ] {
        assert_eq!(m(received, &[("level", level)]), r, "received {level}");
        assert_eq!(m(forwarded, &[("level", level)]), f, "forwarded {level}");
    }
    assert_eq!(
        m(dropped, &[("level", "trace"), ("reason", "drop_rule")]),
        2.0
    );
    assert_eq!(
        m(dropped, &[("level", "debug"), ("reason", "drop_rule")]),
        4.0
    );
    assert_eq!(m(dropped, &[("level", "info"), ("reason", "rate")]), 2.0);
    assert_eq!(
        m(dropped, &[("level", "info"), ("reason", "drop_rule")]),
        0.0
    );
    // The unspecified record has no level but is a readable record: not malformed.
    assert_eq!(m("verbosity_guard_records_malformed_total", &[]), 0.0);
    assert_eq!(
        m("verbosity_guard_batches_total", &[("outcome", "rewritten")]),
        1.0
    );
    // Record bytes are each LogRecord's own encoding.
    let error_record = &sent.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(
        m(
            "verbosity_guard_record_bytes_forwarded_total",
            &[("level", "error")]
        ),
        error_record.encoded_len() as f64
    );
}

#[tokio::test]
async fn an_otlp_proto_batch_that_loses_every_record_gets_an_export_logs_service_response() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(OTLP_PROTO), &up.url).await;
    use SeverityNumber::*;
    // Spend the info budget: both records fit and go upstream.
    let infos = ExportLogsServiceRequest {
        resource_logs: vec![resource(
            "telematics",
            vec![scope(
                "can-bus",
                vec![record(1, Info, "INFO"), record(2, Info3, "")],
            )],
        )],
    };
    let resp = post_proto(&g, "/v1/logs", infos.encode_to_vec()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(decode_request(&up.next_request().await.body), infos);

    // Now debug, trace and info records only: dropped by rule and by rate, none left.
    let doomed = ExportLogsServiceRequest {
        resource_logs: vec![
            resource(
                "telematics",
                vec![
                    scope(
                        "can-bus",
                        vec![record(3, Debug, "DEBUG"), record(4, Info, "INFO")],
                    ),
                    scope("gps", vec![record(5, Unspecified, "trace")]),
                ],
            ),
            resource(
                "diagnostics",
                vec![scope("obd", vec![record(6, Trace4, "TRACE")])],
            ),
        ],
    };
    let resp = post_proto(&g, "/v1/logs", doomed.encode_to_vec()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "content-type"),
        "application/x-protobuf"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "0"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "4"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-max-level"),
        "warn"
    );
    let answer = ExportLogsServiceResponse::decode(resp.bytes().await.unwrap())
        .expect("a protobuf ExportLogsServiceResponse");
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_log_records, 4);
    assert!(!partial.error_message.is_empty());

    // The upstream saw nothing: the next request it records is this one.
    post(&g, "/other", "text/plain", None, "marker").await;
    assert_eq!(up.next_request().await.target, "/other");
    assert_eq!(
        g.metric(
            "verbosity_guard_batches_total",
            &[("route", "otlp"), ("outcome", "all_dropped")]
        )
        .await,
        1.0
    );
}

// ---- otlp-json ---------------------------------------------------------------------------

/// OTLP JSON records as SDKs and the Collector write them: lowerCamelCase, 64-bit integers as
/// strings, enums as numbers, ids in hex. Each is kept or dropped whole.
const J_ERROR: &str = r#"{"timeUnixNano":"1718000000000000001","observedTimeUnixNano":"1718000000000000501","severityNumber":17,"severityText":"ERROR","body":{"stringValue":"brake fault C1234"},"attributes":[{"key":"vin","value":{"stringValue":"WVWZZZ1JZXW000001"}},{"key":"speed_kmh","value":{"intValue":"87"}}],"droppedAttributesCount":0,"flags":1,"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}"#;
const J_DEBUG: &str = r#"{"timeUnixNano":"1718000000000000002","severityNumber":5,"severityText":"DEBUG","body":{"stringValue":"CAN frame 0x1a0"},"attributes":[],"traceId":"","spanId":""}"#;
const J_INFO: &str = r#"{"timeUnixNano":"1718000000000000003","severityNumber":9,"severityText":"INFO","body":{"stringValue":"door opened"},"attributes":[{"key":"door","value":{"stringValue":"front-left"}}],"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175"}"#;
/// No severityNumber: the level comes from severityText.
const J_WARNING_TEXT: &str = r#"{"timeUnixNano":"1718000000000000004","severityText":"WARNING","body":{"stringValue":"tyre pressure low: 1.9 bar"},"attributes":[{"key":"tyre","value":{"stringValue":"rear-right"}},{"key":"bar","value":{"doubleValue":1.9}}]}"#;
const J_TRACE: &str =
    r#"{"timeUnixNano":"1718000000000000005","severityNumber":1,"body":{"stringValue":"tick"}}"#;
const J_GPS_DEBUG_1: &str = r#"{"timeUnixNano":"1718000000000000006","severityNumber":6,"body":{"stringValue":"fix 3D, 9 sats"}}"#;
const J_GPS_DEBUG_2: &str = r#"{"timeUnixNano":"1718000000000000007","severityNumber":7,"body":{"stringValue":"fix 3D, 10 sats"}}"#;
const J_INFO_2: &str = r#"{"timeUnixNano":"1718000000000000008","severityNumber":9,"severityText":"Information","body":{"stringValue":"track changed"},"eventName":"media.track"}"#;
const J_INFO_OVER: &str = r#"{"timeUnixNano":"1718000000000000009","severityNumber":10,"body":{"kvlistValue":{"values":[{"key":"station","value":{"stringValue":"FM 101.1"}}]}}}"#;
/// An enum written as its name, as proto3 JSON also allows.
const J_FATAL: &str = r#"{"timeUnixNano":"1718000000000000010","severityNumber":"SEVERITY_NUMBER_FATAL","severityText":"FATAL","body":{"stringValue":"head unit crashed"}}"#;
const J_DIAG_DEBUG: &str = r#"{"timeUnixNano":"1718000000000000011","severityNumber":8,"body":{"stringValue":"OBD poll"}}"#;

fn json_scope(name: &str, records: &[&str]) -> String {
    format!(
        r#"{{"scope":{{"name":"{name}","version":"2.1.0","attributes":[{{"key":"lib","value":{{"stringValue":"{name}"}}}}]}},"logRecords":[{}],"schemaUrl":"https://example.com/scope/{name}"}}"#,
        records.join(",")
    )
}

fn json_resource(service: &str, scopes: &[String]) -> String {
    format!(
        r#"{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}},{{"key":"host.name","value":{{"stringValue":"tcu-7"}}}}],"droppedAttributesCount":2}},"scopeLogs":[{}],"schemaUrl":"https://opentelemetry.io/schemas/1.24.0"}}"#,
        scopes.join(",")
    )
}

fn json_request(resources: &[String]) -> String {
    format!(r#"{{"resourceLogs":[{}]}}"#, resources.join(","))
}

/// The log records of an OTLP JSON request, each exactly as written.
fn json_records(body: &[u8]) -> Vec<Vec<String>> {
    #[derive(Deserialize)]
    struct Request<'a> {
        #[serde(rename = "resourceLogs", borrow)]
        resource_logs: Vec<ResourceLogs<'a>>,
    }
    #[derive(Deserialize)]
    struct ResourceLogs<'a> {
        #[serde(rename = "scopeLogs", borrow)]
        scope_logs: Vec<ScopeLogs<'a>>,
    }
    #[derive(Deserialize)]
    struct ScopeLogs<'a> {
        #[serde(rename = "logRecords", borrow)]
        log_records: Vec<&'a RawValue>,
    }
    let req: Request<'_> = serde_json::from_slice(body).expect("an OTLP JSON request");
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.iter().map(|r| r.get().to_owned()).collect())
        .collect()
}

#[tokio::test]
async fn an_otlp_json_batch_keeps_its_records_byte_for_byte_and_answers_in_json_when_all_drop() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(&route("otlp-json")), &up.url).await;
    let telematics = |can: &[&str], gps: &[&str]| {
        json_resource(
            "telematics",
            &[json_scope("can-bus", can), json_scope("gps", gps)],
        )
    };
    let infotainment =
        |media: &[&str]| json_resource("infotainment", &[json_scope("media", media)]);
    let sent = json_request(&[
        telematics(
            &[J_ERROR, J_DEBUG, J_INFO, J_WARNING_TEXT, J_TRACE],
            &[J_GPS_DEBUG_1, J_GPS_DEBUG_2],
        ),
        infotainment(&[J_INFO_2, J_INFO_OVER, J_FATAL]),
        json_resource("diagnostics", &[json_scope("obd", &[J_DIAG_DEBUG])]),
    ]);
    // The `gps` scope and the `diagnostics` resource lost every record: they go.
    let want = json_request(&[
        json_resource(
            "telematics",
            &[json_scope("can-bus", &[J_ERROR, J_INFO, J_WARNING_TEXT])],
        ),
        infotainment(&[J_INFO_2, J_FATAL]),
    ]);

    let resp = post(&g, "/v1/logs", "application/json", None, sent).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "5"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "6"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-max-level"),
        "warn"
    );

    let seen = up.next_request().await;
    assert_eq!(header(&seen.headers, "content-type"), "application/json");
    assert_eq!(
        header(&seen.headers, "content-length"),
        seen.body.len().to_string()
    );
    // Valid JSON, with the same document the kept records make...
    let got: serde_json::Value = serde_json::from_slice(&seen.body).expect("valid JSON");
    let expected: serde_json::Value = serde_json::from_str(&want).unwrap();
    assert_eq!(got, expected);
    // ...and each kept record exactly as the sender wrote it.
    assert_eq!(
        json_records(&seen.body),
        [
            vec![J_ERROR, J_INFO, J_WARNING_TEXT],
            vec![J_INFO_2, J_FATAL]
        ]
    );

    let text = g.scrape().await;
    for (level, n) in [("info", 2.0), ("warn", 1.0), ("fatal", 1.0), ("debug", 0.0)] {
        let labels = [("route", "otlp"), ("level", level)];
        let forwarded = metric_value(&text, "verbosity_guard_records_forwarded_total", &labels);
        assert_eq!(forwarded.unwrap_or(0.0), n, "forwarded {level}");
    }

    // info is spent: a batch of debug, trace and info records loses all of them.
    let doomed = json_request(&[telematics(&[J_DEBUG, J_INFO, J_TRACE], &[])]);
    let resp = post(&g, "/v1/logs", "application/json", None, doomed).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-type"), "application/json");
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "3"
    );
    let body = json(resp).await;
    assert_eq!(body["partialSuccess"]["rejectedLogRecords"], "3", "{body}");
    assert!(
        body["partialSuccess"]["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    post(&g, "/other", "text/plain", None, "marker").await;
    assert_eq!(up.next_request().await.target, "/other");
}

// ---- compression -------------------------------------------------------------------------

#[tokio::test]
async fn a_compressed_otlp_proto_batch_is_filtered_and_re_encoded() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(OTLP_PROTO), &up.url).await;
    let sent = mixed_request();
    let want = mixed_request_kept(&sent);
    let packed = gzip(&sent.encode_to_vec());

    let resp = post(
        &g,
        "/v1/logs",
        "application/x-protobuf",
        Some("gzip"),
        packed.clone(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "5"
    );
    let seen = up.next_request().await;
    assert_eq!(header(&seen.headers, "content-encoding"), "gzip");
    assert_eq!(
        header(&seen.headers, "content-length"),
        seen.body.len().to_string()
    );
    assert_ne!(seen.body, packed, "the batch was rewritten");
    assert_eq!(decode_request(&gunzip(&seen.body)), want);
    assert_eq!(
        g.metric(
            "verbosity_guard_decoded_bodies_total",
            &[("route", "otlp"), ("encoding", "gzip")]
        )
        .await,
        1.0
    );
}

// ---- malformed ---------------------------------------------------------------------------

#[tokio::test]
async fn a_body_that_is_not_otlp_is_forwarded_untouched_or_rejected_per_route() {
    let up = TestUpstream::start().await;
    let strict = OTLP_PROTO
        .replace("name: otlp", "name: strict")
        .replace("path: /v1/logs", "path: /strict/v1/logs")
        + "      on_malformed: reject\n";
    let g = TestGuard::start(
        &policy_with_route(&format!("{OTLP_PROTO}{strict}")),
        &up.url,
    )
    .await;
    // An upload cut short (the last resource's length runs past the end), and plain text.
    let whole = mixed_request().encode_to_vec();
    let cut = whole[..whole.len() - 3].to_vec();
    for garbage in [cut, b"this is not protobuf\n".to_vec()] {
        assert!(ExportLogsServiceRequest::decode(&garbage[..]).is_err());

        let resp = post_proto(&g, "/v1/logs", garbage.clone()).await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()
                .get("x-verbosity-guard-records-kept")
                .is_none()
        );
        let seen = up.next_request().await;
        assert_eq!(seen.target, "/v1/logs");
        assert_eq!(seen.body, garbage, "forwarded byte for byte");

        // OTLP/HTTP answers errors with a google.rpc.Status: INVALID_ARGUMENT, and why.
        let resp = post_proto(&g, "/strict/v1/logs", garbage).await;
        assert_eq!(resp.status(), 400);
        let status = Status::decode(resp.bytes().await.unwrap()).unwrap();
        assert_eq!(status.code, 3, "INVALID_ARGUMENT");
        assert!(status.message.contains("otlp-proto"), "{}", status.message);
    }
    // The rejected ones never reached the upstream.
    post(&g, "/other", "text/plain", None, "marker").await;
    assert_eq!(up.next_request().await.target, "/other");
    for (route, outcome) in [
        ("otlp", "malformed_forwarded"),
        ("strict", "malformed_rejected"),
    ] {
        assert_eq!(
            g.metric(
                "verbosity_guard_batches_total",
                &[("route", route), ("outcome", outcome)]
            )
            .await,
            2.0,
            "{route}"
        );
    }
}

// ---- the OpenTelemetry Python SDK --------------------------------------------------------
//
// Marked ignored, naming what it needs, so that a plain `cargo test` lists it as ignored where
// the SDK may be missing; `cargo test -- --include-ignored` (what `.ci/run` runs) runs it, and
// then a missing SDK is a failure that says how to install it.

/// Longest the SDK script may run before it is killed and the test fails.
const SDK_PATIENCE: Duration = Duration::from_secs(60);

/// Fails the test, saying how to install them, unless the OpenTelemetry SDK and its OTLP/HTTP
/// exporter can be imported by `python3`.
fn require_otel_sdk() {
    require_program(
        "python3",
        &["-c", "import opentelemetry.exporter.otlp.proto.http"],
        "the OpenTelemetry Python SDK: install it with `pip install -r \
         tests/otel_sdk/requirements.txt` (opentelemetry-sdk==1.45.2 \
         opentelemetry-exporter-otlp-proto-http==1.45.2)",
    );
}

/// Runs `tests/otel_sdk/export_logs.py ENDPOINT COUNT`, killing it after [`SDK_PATIENCE`].
/// Returns its stdout; fails the test if it fails.
async fn run_sdk_script(endpoint: &str, count: usize) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel_sdk/export_logs.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(endpoint)
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let pid = child.id();
    let mut waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = match tokio::time::timeout(SDK_PATIENCE, &mut waiting).await {
        Ok(joined) => joined.unwrap().expect("waiting for python3"),
        Err(_) => {
            // The child is still ours (not reaped until `wait` returns), so its pid is too.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let out = waiting.await.unwrap().expect("waiting for python3");
            panic!(
                "the SDK script ran longer than {SDK_PATIENCE:?} and was killed\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the SDK script failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn string_body(r: &LogRecord) -> &str {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("a string body, not {other:?}"),
    }
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

#[tokio::test]
#[ignore = "needs the OpenTelemetry Python SDK (pip install -r tests/otel_sdk/requirements.txt); run with --include-ignored"]
async fn the_opentelemetry_python_sdk_exports_through_the_guard_without_its_debug_records() {
    require_otel_sdk();
    const N: usize = 12;
    let up = TestUpstream::start().await;
    let policy = OTLP_PROTO.replace(
        "levels: { trace: drop, debug: drop, info: { rate: 2/m, burst: 2 }, warn: keep }",
        "levels: { debug: drop }",
    );
    let g = TestGuard::start(&policy_with_route(&policy), &up.url).await;
    let stdout = run_sdk_script(&format!("{}/v1/logs", g.url), N).await;
    let exports: f64 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("exports="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exports= in the script's output: {stdout}"));

    // The script has exited, so every request it sent has been answered, and the upstream
    // records a request before it answers: all of them are in.
    let mut requests = Vec::new();
    while let Some(seen) = up.try_next_request().await {
        requests.push(seen);
    }
    assert!(!requests.is_empty(), "nothing reached the upstream");
    let mut by_level: [Vec<String>; 3] = Default::default();
    for seen in &requests {
        assert_eq!(seen.target, "/v1/logs");
        assert_eq!(
            header(&seen.headers, "content-type"),
            "application/x-protobuf"
        );
        let req = decode_request(&seen.body);
        let mut records = 0;
        for rl in &req.resource_logs {
            let attrs = &rl.resource.as_ref().expect("a resource").attributes;
            assert_eq!(
                string_attribute(attrs, "service.name"),
                Some("verbosity-guard-sdk-test")
            );
            for sl in &rl.scope_logs {
                assert_eq!(sl.scope.as_ref().unwrap().name, "vehicle.telemetry");
                for r in &sl.log_records {
                    let (i, text) = match r.severity_number {
                        9 => (0, "INFO"),
                        13 => (1, "WARN"),
                        17 => (2, "ERROR"),
                        n => panic!("a record of severity {n} ({r:?}) reached the upstream"),
                    };
                    assert_eq!(r.severity_text, text);
                    by_level[i].push(string_body(r).to_owned());
                    records += 1;
                }
            }
        }
        assert_eq!(
            header(&seen.headers, "x-verbosity-guard-records-kept"),
            records.to_string()
        );
    }
    for (got, level) in by_level.iter_mut().zip(["info", "warning", "error"]) {
        let mut want: Vec<String> = (0..N)
            .map(|i| format!("{level} record {i} of {N}"))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(*got, want, "{level} records");
    }

    let text = g.scrape().await;
    let m = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("route", "otlp")];
        all.extend_from_slice(labels);
        metric_value(&text, name, &all).unwrap_or(0.0)
    };
    let n = N as f64;
    for level in ["debug", "info", "warn", "error"] {
        assert_eq!(
            m(
                "verbosity_guard_records_received_total",
                &[("level", level)]
            ),
            n,
            "received {level}"
        );
    }
    assert_eq!(
        m(
            "verbosity_guard_records_dropped_total",
            &[("level", "debug"), ("reason", "drop_rule")]
        ),
        n
    );
    for level in ["info", "warn", "error"] {
        assert_eq!(
            m(
                "verbosity_guard_records_forwarded_total",
                &[("level", level)]
            ),
            n,
            "forwarded {level}"
        );
    }
    assert_eq!(
        m(
            "verbosity_guard_records_forwarded_total",
            &[("level", "debug")]
        ),
        0.0
    );
    // The script flushed half the debug records alone first: those batches the guard answered
    // itself, and the SDK took that answer as a success (the script checks every export).
    let batches = |outcome| m("verbosity_guard_batches_total", &[("outcome", outcome)]);
    assert!(batches("all_dropped") >= 1.0, "{text}");
    assert_eq!(
        batches("rewritten") + batches("untouched"),
        requests.len() as f64
    );
    assert_eq!(
        batches("all_dropped") + batches("rewritten") + batches("untouched"),
        exports
    );
}

#[tokio::test]
async fn an_otlp_route_takes_json_and_protobuf_by_content_type_as_otlp_http_does() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(OTLP_PROTO), &up.url).await;
    // The route is declared otlp-proto; an exporter configured for JSON posts to the same path.
    let doc = json_request(&[json_resource(
        "tcu",
        &[json_scope("can", &[J_ERROR, J_DEBUG, J_WARNING_TEXT])],
    )]);
    let resp = post(&g, "/v1/logs", "application/json; charset=utf-8", None, doc).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "2"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "1"
    );
    let seen = up.next_request().await;
    assert_eq!(
        json_records(&seen.body),
        [vec![J_ERROR.to_owned(), J_WARNING_TEXT.to_owned()]]
    );

    // All dropped: the answer is JSON too, matching the request.
    let doc = json_request(&[json_resource("tcu", &[json_scope("can", &[J_DEBUG])])]);
    let resp = post(&g, "/v1/logs", "application/json", None, doc).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-type"), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["partialSuccess"]["rejectedLogRecords"], "1");
}

// ---- guard rejections on OTLP routes ---------------------------------------------------------

/// `google.rpc.Status`, declared here from its proto (not the guard's copy) so the test checks
/// the wire format independently.
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// OTLP/HTTP requires a `google.rpc.Status` body on 4xx/5xx, encoded like the request, and
/// exporters honour `Retry-After` on 429: the guard's own rejections on OTLP routes follow that.
#[tokio::test]
async fn guard_rejections_on_otlp_routes_carry_a_status_body_and_retry_after() {
    let up = TestUpstream::start().await;
    let limited = OTLP_PROTO.replace(
        "    records:",
        "    payload: { client_requests: { rate: 1/m, burst: 1 } }\n    records:",
    );
    let g = TestGuard::start(&policy_with_route(&limited), &up.url).await;
    let body = mixed_request().encode_to_vec();

    let resp = post_proto(&g, "/v1/logs", body.clone()).await;
    assert_eq!(resp.status(), 200);
    up.next_request().await;

    let resp = post_proto(&g, "/v1/logs", body.clone()).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(resp.headers(), "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        header(resp.headers(), "content-type"),
        "application/x-protobuf"
    );
    let status = Status::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 8, "RESOURCE_EXHAUSTED");
    assert!(
        status.message.contains("client_requests"),
        "{}",
        status.message
    );

    // The same rejection for an OTLP/JSON sender is the Status in JSON.
    let resp = post(&g, "/v1/logs", "application/json", None, "{}").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(header(resp.headers(), "content-type"), "application/json");
    let status = json(resp).await;
    assert_eq!(status["code"], 8);
    assert!(status["message"].as_str().unwrap().contains("retry after"));

    // Both are counted like any other rejection.
    assert_eq!(
        g.metric(
            "verbosity_guard_rejections_total",
            &[("route", "otlp"), ("reason", "client_requests")]
        )
        .await,
        2.0
    );
}
