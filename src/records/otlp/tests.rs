use bytes::Bytes;
use prost::Message;
use serde_json::Value as Json;

use super::binary::{RawRequest, RawResourceLogs, RawScopeLogs};
use super::fixtures::{TRACE_ID, record, resource, scope};
use super::proto::{self, AnyValue, KeyValue, LogRecord, SeverityNumber, any_value};
use super::{export_response_json, export_response_proto};
use crate::records::{
    Batch, Format, Level, LevelRule, NotFormat, OnMalformed, Record, RecordsPolicy, Sample,
    SampleBy, sample,
};

fn policy(format: Format, sample_by: SampleBy) -> RecordsPolicy {
    let mut rules: [LevelRule; Level::COUNT] = Default::default();
    // Every level samples, so every record gets a hash the tests can check.
    for r in &mut rules {
        r.sample = Some(Sample::per_million(500_000));
    }
    RecordsPolicy {
        format,
        level_field: Vec::new(),
        rules,
        unknown_level: Level::Trace,
        on_malformed: OnMalformed::Forward,
        sample_by,
        max_decoded: u64::MAX,
        max_ratio: 100,
    }
}

fn proto_policy() -> RecordsPolicy {
    policy(Format::OtlpProto, SampleBy::Record)
}

fn json_policy() -> RecordsPolicy {
    policy(Format::OtlpJson, SampleBy::Record)
}

fn by_trace() -> SampleBy {
    SampleBy::Field(vec![b"trace_id".as_slice().into()])
}

/// [`TRACE_ID`] as OTLP JSON writes it.
const TRACE_ID_HEX: &str = "5b8efff798038103d269b633813fc60c";

/// Three resources: one keeps some records (and an already-empty scope, and a scope whose
/// records are all debug), one holds only debug records, one a fatal record with a map body.
fn request() -> proto::ExportLogsServiceRequest {
    use SeverityNumber::*;
    let mut fatal = record(9, Fatal2, "FATAL");
    fatal.body = Some(AnyValue {
        value: Some(any_value::Value::KvlistValue(proto::KeyValueList {
            values: vec![
                KeyValue::string("reason", "brake fault"),
                KeyValue {
                    key: "codes".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::ArrayValue(proto::ArrayValue {
                            values: vec![AnyValue::string("C1234"), AnyValue::string("C5678")],
                        })),
                    }),
                },
            ],
        })),
    });
    proto::ExportLogsServiceRequest {
        resource_logs: vec![
            resource(
                "telematics",
                vec![
                    scope(
                        "can",
                        vec![
                            record(0, Info, "INFO"),
                            record(1, Debug, "DEBUG"),
                            record(2, Unspecified, "WARNING"),
                            record(3, Unspecified, ""),
                            record(4, Error3, "ERROR"),
                        ],
                    ),
                    scope("empty", Vec::new()),
                    scope(
                        "chatty",
                        vec![record(5, Debug2, "debug"), record(6, Trace, "")],
                    ),
                ],
            ),
            resource(
                "infotainment",
                vec![scope(
                    "ui",
                    vec![record(7, Debug, "DEBUG"), record(8, Debug4, "")],
                )],
            ),
            resource("brakes", vec![scope("abs", vec![fatal])]),
        ],
    }
}

fn all_records(req: &proto::ExportLogsServiceRequest) -> Vec<LogRecord> {
    req.resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| s.log_records.clone())
        .collect()
}

/// Keeps `info` and above.
fn keep_info_and_up(records: &mut [Record]) {
    for r in records {
        r.keep = r.level >= Level::Info;
    }
}

#[test]
fn proto_round_trip_keeps_exactly_the_kept_records() {
    let req = request();
    let body = Bytes::from(req.encode_to_vec());
    let mut batch = Batch::parse_bytes(&proto_policy(), &body).unwrap();

    use Level::*;
    let levels: Vec<_> = batch.records.iter().map(|r| r.level).collect();
    // Unspecified severity with text "WARNING" reads the text; with no text it is unknown.
    assert_eq!(
        levels,
        [
            Info, Debug, Warn, Trace, Error, Debug, Trace, Debug, Debug, Fatal
        ]
    );
    assert!(batch.records.iter().all(|r| !r.malformed));

    // Byte ranges: each record's range is exactly its own encoding.
    let originals = all_records(&req);
    assert_eq!(batch.records.len(), originals.len());
    for (r, orig) in batch.records.iter().zip(&originals) {
        assert_eq!(&body[r.range()], orig.encode_to_vec().as_slice());
        assert_eq!(r.bytes(), orig.encoded_len() as u64);
    }

    keep_info_and_up(&mut batch.records);
    let out = batch.rewrite(&body);
    let got = proto::ExportLogsServiceRequest::decode(out.as_slice()).unwrap();

    // Expected: the same request with the dropped records removed and the envelopes they
    // emptied gone; the already-empty scope stays.
    let mut want = request();
    want.resource_logs.truncate(1);
    want.resource_logs.push(request().resource_logs.remove(2));
    let can = &mut want.resource_logs[0].scope_logs[0].log_records;
    can.remove(3); // unknown (trace)
    can.remove(1); // debug
    want.resource_logs[0].scope_logs.truncate(2); // "chatty" emptied
    assert_eq!(got, want);

    // Kept records are byte-identical to the input.
    let raw = RawRequest::decode(Bytes::from(out)).unwrap();
    let kept_out: Vec<Bytes> = raw
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| s.log_records.clone())
        .collect();
    let kept_in = kept_bytes(&batch, &body);
    assert_eq!(kept_out.len(), kept_in.len());
    for (a, b) in kept_out.iter().zip(kept_in) {
        assert_eq!(a.as_ref(), b);
    }
}

#[test]
fn proto_parse_from_a_slice_copies_once_and_agrees() {
    let body = request().encode_to_vec();
    let mut from_slice = Batch::parse(&proto_policy(), &body).unwrap();
    let mut from_bytes = Batch::parse_bytes(&proto_policy(), &Bytes::from(body.clone())).unwrap();
    assert_eq!(from_slice.records, from_bytes.records);
    keep_info_and_up(&mut from_slice.records);
    keep_info_and_up(&mut from_bytes.records);
    assert_eq!(from_slice.rewrite(&body), from_bytes.rewrite(&body));
}

#[test]
fn proto_keeping_everything_or_nothing() {
    let body = Bytes::from(request().encode_to_vec());
    let mut batch = Batch::parse_bytes(&proto_policy(), &body).unwrap();
    for r in &mut batch.records {
        r.keep = true;
    }
    // Every field the envelopes declare survives: the whole request comes back the same.
    assert_eq!(batch.rewrite(&body), body.as_ref());
    for r in &mut batch.records {
        r.keep = false;
    }
    assert!(batch.rewrite(&body).is_empty());
}

#[test]
fn proto_sampling_hashes_the_trace_id_or_the_record() {
    let body = Bytes::from(request().encode_to_vec());
    let batch = Batch::parse_bytes(&policy(Format::OtlpProto, by_trace()), &body).unwrap();
    for (i, r) in batch.records.iter().enumerate() {
        // Records with an even sequence number carry TRACE_ID; the fatal one is number 9.
        let want = if i.is_multiple_of(2) {
            sample::hash(&TRACE_ID)
        } else {
            sample::hash(&body[r.range()])
        };
        assert_eq!(r.hash, want, "record {i}");
    }
    let batch = Batch::parse_bytes(&proto_policy(), &body).unwrap();
    for r in &batch.records {
        assert_eq!(r.hash, sample::hash(&body[r.range()]));
    }
}

#[test]
fn proto_all_zero_trace_id_hashes_the_record() {
    let mut rec = record(0, SeverityNumber::Info, "");
    rec.trace_id = vec![0; 16];
    let body = Bytes::from(
        proto::ExportLogsServiceRequest {
            resource_logs: vec![resource("x", vec![scope("s", vec![rec])])],
        }
        .encode_to_vec(),
    );
    let batch = Batch::parse_bytes(&policy(Format::OtlpProto, by_trace()), &body).unwrap();
    assert_eq!(
        batch.records[0].hash,
        sample::hash(&body[batch.records[0].range()])
    );
}

#[test]
fn proto_garbage_is_not_the_format() {
    let mut truncated = request().encode_to_vec();
    truncated.pop();
    for body in [
        &[0xff][..],
        &[0x0a, 0x05, 0x01],
        // Field 1 (resource_logs) as a varint: wrong wire type.
        &[0x08, 0x01],
        // Wire type 7 does not exist.
        &[0x0f],
        br#"{"resourceLogs":[]}"#,
        &truncated,
    ] {
        let err = Batch::parse_bytes(&proto_policy(), &Bytes::copy_from_slice(body)).err();
        assert_eq!(
            err,
            Some(NotFormat("not an OTLP protobuf ExportLogsServiceRequest")),
            "{body:?}"
        );
    }
    // The empty message is a valid, empty request.
    let batch = Batch::parse_bytes(&proto_policy(), &Bytes::new()).unwrap();
    assert!(batch.records.is_empty());
    assert!(batch.rewrite(b"").is_empty());
}

#[test]
fn proto_record_with_a_broken_encoding_is_malformed_not_fatal() {
    // Inside a valid envelope a record is just length-delimited bytes; prost only notices a
    // broken record when the head is decoded from it.
    let good = Bytes::from(record(0, SeverityNumber::Warn, "WARN").encode_to_vec());
    let broken = [
        // Field 2 (severity_number) with its varint cut off.
        Bytes::from_static(&[0x10]),
        // Field 2 as length-delimited: wrong wire type.
        Bytes::from_static(&[0x12, 0x01, 0x00]),
        // A field whose length runs past the record.
        Bytes::from_static(&[0x2a, 0x09, 0x0a]),
    ];
    let mut log_records = vec![good.clone()];
    log_records.extend(broken.iter().cloned());
    // An empty record is a valid LogRecord with every field at its default.
    log_records.push(Bytes::new());
    let body = Bytes::from(
        RawRequest {
            resource_logs: vec![RawResourceLogs {
                resource: None,
                scope_logs: vec![RawScopeLogs {
                    scope: None,
                    log_records,
                    schema_url: Bytes::new(),
                }],
                schema_url: Bytes::new(),
            }],
        }
        .encode_to_vec(),
    );
    let mut batch = Batch::parse_bytes(&proto_policy(), &body).unwrap();
    let flags: Vec<_> = batch
        .records
        .iter()
        .map(|r| (r.level, r.malformed))
        .collect();
    use Level::*;
    assert_eq!(
        flags,
        [
            (Warn, false),
            (Trace, true),
            (Trace, true),
            (Trace, true),
            (Trace, false)
        ]
    );
    assert_eq!(&body[batch.records[0].range()], good.as_ref());
    assert_eq!(&body[batch.records[2].range()], broken[1].as_ref());
    // Malformed records are forwarded as sent when kept.
    for r in &mut batch.records {
        r.keep = r.malformed;
    }
    let raw = RawRequest::decode(Bytes::from(batch.rewrite(&body))).unwrap();
    assert_eq!(raw.resource_logs[0].scope_logs[0].log_records, broken);
}

#[test]
fn proto_response_decodes_back() {
    let resp = proto::ExportLogsServiceResponse::decode(
        export_response_proto(12, "debug records over budget").as_slice(),
    )
    .unwrap();
    let ps = resp.partial_success.unwrap();
    assert_eq!(ps.rejected_log_records, 12);
    assert_eq!(ps.error_message, "debug records over budget");
}

#[test]
fn json_response_parses_with_the_proto3_mapping() {
    let out = export_response_json(12, "over \"budget\"\n");
    let v: Json = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedLogRecords"], "12");
    assert_eq!(v["partialSuccess"]["errorMessage"], "over \"budget\"\n");
    assert_eq!(
        export_response_json(-1, ""),
        br#"{"partialSuccess":{"rejectedLogRecords":"-1","errorMessage":""}}"#
    );
}

/// As the OpenTelemetry Collector's `otlphttp` exporter writes it (pretty-printed here).
const COLLECTOR_DOC: &str = r#"{
  "resourceLogs": [
    {
      "resource": {
        "attributes": [
          { "key": "service.name", "value": { "stringValue": "telematics" } },
          { "key": "vehicle.vin", "value": { "stringValue": "WVWZZZ1JZXW000001" } }
        ]
      },
      "scopeLogs": [
        {
          "scope": { "name": "vehicle.can", "version": "2.1.0" },
          "logRecords": [
            {
              "timeUnixNano": "1718000000000000000",
              "observedTimeUnixNano": "1718000000000000500",
              "severityNumber": 9,
              "severityText": "INFO",
              "body": { "stringValue": "door opened" },
              "attributes": [
                { "key": "door", "value": { "stringValue": "front-left" } },
                { "key": "speed_kmh", "value": { "intValue": "0" } }
              ],
              "flags": 1,
              "traceId": "5b8efff798038103d269b633813fc60c",
              "spanId": "eee19b7ec3c1b174"
            },
            {
              "timeUnixNano": "1718000000000000001",
              "severityNumber": 5,
              "severityText": "DEBUG",
              "body": { "stringValue": "CAN frame 0x1a0 \"ok\"" },
              "traceId": "5b8efff798038103d269b633813fc60c",
              "spanId": "eee19b7ec3c1b174"
            },
            {
              "timeUnixNano": "1718000000000000002",
              "severityText": "WARNING",
              "body": { "stringValue": "tyre pressure low" }
            },
            {
              "timeUnixNano": "1718000000000000003",
              "severityNumber": "SEVERITY_NUMBER_ERROR",
              "body": { "kvlistValue": { "values": [ { "key": "code", "value": { "stringValue": "P0420" } } ] } }
            },
            {
              "timeUnixNano": "1718000000000000004",
              "body": { "stringValue": "no severity at all" }
            }
          ],
          "schemaUrl": "https://opentelemetry.io/schemas/1.24.0"
        },
        {
          "scope": { "name": "vehicle.gps" },
          "logRecords": [
            { "severityNumber": 1, "body": { "stringValue": "fix" } },
            { "severityNumber": 6, "severityText": "DEBUG2", "body": { "stringValue": "sats 9" } }
          ]
        },
        { "scope": { "name": "idle" }, "logRecords": [] }
      ],
      "schemaUrl": "https://opentelemetry.io/schemas/1.24.0"
    },
    {
      "resource": { "attributes": [ { "key": "service.name", "value": { "stringValue": "ui" } } ] },
      "scopeLogs": [ { "logRecords": [ { "severityNumber": 7, "body": { "stringValue": "tap" } } ] } ]
    },
    {
      "resource": { "attributes": [ { "key": "service.name", "value": { "stringValue": "brakes" } } ] },
      "scopeLogs": [ { "logRecords": [ { "severityNumber": 21, "severityText": "FATAL" } ] } ]
    }
  ]
}"#;

/// `doc` with the records `keep` refuses removed and the envelopes that emptied gone.
fn filter_json(doc: &Json, keep: &mut impl FnMut() -> bool) -> Json {
    let mut doc = doc.clone();
    let resources = doc["resourceLogs"].as_array_mut().unwrap();
    resources.retain_mut(|rl| {
        let scopes = rl["scopeLogs"].as_array_mut().unwrap();
        let (mut held, mut kept) = (0, 0);
        scopes.retain_mut(|sl| {
            let recs = sl["logRecords"].as_array_mut().unwrap();
            let n = recs.len();
            recs.retain(|_| keep());
            held += n;
            kept += recs.len();
            n == 0 || !recs.is_empty()
        });
        held == 0 || kept > 0
    });
    doc
}

#[test]
fn json_round_trip_keeps_exactly_the_kept_records() {
    let body = COLLECTOR_DOC.as_bytes();
    let mut batch = Batch::parse(&json_policy(), body).unwrap();
    use Level::*;
    let levels: Vec<_> = batch.records.iter().map(|r| r.level).collect();
    assert_eq!(
        levels,
        [Info, Debug, Warn, Error, Trace, Trace, Debug, Debug, Fatal]
    );
    assert!(batch.records.iter().all(|r| !r.malformed));

    // Each record's range is its object as written.
    let doc: Json = serde_json::from_str(COLLECTOR_DOC).unwrap();
    let originals: Vec<&Json> = doc["resourceLogs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["scopeLogs"].as_array().unwrap())
        .flat_map(|s| s["logRecords"].as_array().unwrap())
        .collect();
    for (r, orig) in batch.records.iter().zip(&originals) {
        let raw = &body[r.range()];
        assert_eq!(raw.first(), Some(&b'{'));
        assert_eq!(raw.last(), Some(&b'}'));
        assert_eq!(&serde_json::from_slice::<Json>(raw).unwrap(), *orig);
    }

    keep_info_and_up(&mut batch.records);
    let out = batch.rewrite(body);
    let got: Json = serde_json::from_slice(&out).unwrap();
    let mut flags = batch.records.iter().map(|r| r.keep);
    let want = filter_json(&doc, &mut || flags.next().unwrap());
    assert_eq!(got, want);
    // The gps scope and the ui resource emptied; the idle scope was empty already and stays.
    assert_eq!(got["resourceLogs"].as_array().unwrap().len(), 2);
    assert_eq!(
        got["resourceLogs"][0]["scopeLogs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Kept records are byte-identical, in order.
    let again = Batch::parse(&json_policy(), &out).unwrap();
    let kept_in = kept_bytes(&batch, body);
    let kept_out: Vec<&[u8]> = again.records.iter().map(|r| &out[r.range()]).collect();
    assert_eq!(kept_out, kept_in);
}

#[test]
fn json_keeps_every_other_field_as_written_and_in_order() {
    let body = br#" {"x-first": [1, 2],
        "resourceLogs": [{"schemaUrl": "s", "resource": {"attributes": []},
            "scopeLogs": [{"logRecords": [{"severityNumber": 9}, {"severityNumber": 5}],
                           "scope": {"name": "n"}, "extra": null}],
            "future": {"a": true}}],
        "last": "z"} "#;
    let mut batch = Batch::parse(&json_policy(), body).unwrap();
    keep_info_and_up(&mut batch.records);
    let out = batch.rewrite(body);
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"x-first":[1, 2],"resourceLogs":[{"schemaUrl":"s","resource":{"attributes": []},"scopeLogs":[{"logRecords":[{"severityNumber": 9}],"scope":{"name": "n"},"extra":null}],"future":{"a": true}}],"last":"z"}"#
    );
}

#[test]
fn json_snake_case_keys_and_enum_names() {
    let body = format!(
        r#"{{"resource_logs":[{{"scope_logs":[{{"log_records":[
            {{"severity_number":"SEVERITY_NUMBER_WARN2","trace_id":"{TRACE_ID_HEX}"}},
            {{"severity_number":"SEVERITY_NUMBER_UNSPECIFIED","severity_text":"error"}},
            {{"severityNumber":"17"}},
            {{"severityNumber":"SEVERITY_NUMBER_FATAL4"}},
            {{"severityNumber":"SEVERITY_NUMBER_TRACE"}},
            {{"severityNumber":0,"severityText":"w\u0061rn"}},
            {{"severityNumber":"SEVERITY_NUMBER_BOGUS","severityText":"dbg"}},
            {{"severity_text":"INFO"}}
        ]}}]}}]}}"#
    );
    let body = body.as_bytes();
    let mut batch = Batch::parse(&policy(Format::OtlpJson, by_trace()), body).unwrap();
    use Level::*;
    let levels: Vec<_> = batch.records.iter().map(|r| r.level).collect();
    assert_eq!(
        levels,
        [Warn, Error, Error, Fatal, Trace, Warn, Debug, Info]
    );
    // A hex trace id hashes as its bytes: the same trace samples alike in both encodings.
    assert_eq!(batch.records[0].hash, sample::hash(&TRACE_ID));
    assert_eq!(
        batch.records[1].hash,
        sample::hash(&body[batch.records[1].range()])
    );

    keep_info_and_up(&mut batch.records);
    let out = batch.rewrite(body);
    let got: Json = serde_json::from_slice(&out).unwrap();
    let recs = got["resource_logs"][0]["scope_logs"][0]["log_records"]
        .as_array()
        .unwrap();
    assert_eq!(recs.len(), 6);
}

#[test]
fn json_escaped_keys_and_null_lists() {
    let body = br#"{"resource\u004cogs":[{"scopeLogs":[{"log\u0052ecords":[{"severityNumber":13},{"severityNumber":1}]}]}],"n\"ote":1}"#;
    let mut batch = Batch::parse(&json_policy(), body).unwrap();
    assert_eq!(batch.records.len(), 2);
    keep_info_and_up(&mut batch.records);
    let got: Json = serde_json::from_slice(&batch.rewrite(body)).unwrap();
    assert_eq!(
        got["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["severityNumber"],
        13
    );
    assert_eq!(got["n\"ote"], 1);

    let body = br#"{"resourceLogs":[{"scopeLogs":null},{"scopeLogs":[{"logRecords":null}]}]}"#;
    let batch = Batch::parse(&json_policy(), body).unwrap();
    assert!(batch.records.is_empty());
    assert_eq!(batch.rewrite(body), body);
    let body = br#"{}"#;
    assert_eq!(
        Batch::parse(&json_policy(), body).unwrap().rewrite(body),
        body
    );
}

#[test]
fn json_non_object_record_is_malformed() {
    let body =
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[1,"x",{"severityText":"ERROR"},[]]}]}]}"#;
    let mut batch = Batch::parse(&json_policy(), body).unwrap();
    let flags: Vec<_> = batch
        .records
        .iter()
        .map(|r| (r.level, r.malformed))
        .collect();
    use Level::*;
    assert_eq!(
        flags,
        [(Trace, true), (Trace, true), (Error, false), (Trace, true)]
    );
    for r in &mut batch.records {
        r.keep = true;
    }
    assert_eq!(
        batch.rewrite(body),
        body.as_slice(),
        "kept as written, malformed or not"
    );
}

#[test]
fn json_broken_documents_are_not_the_format() {
    for body in [
        &b""[..],
        b"[]",
        b"null",
        br#"{"resourceLogs":5}"#,
        br#"{"resourceLogs":[5]}"#,
        br#"{"resourceLogs":[{"scopeLogs":{}}]}"#,
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{]}]}]}"#,
        br#"{"resourceLogs":[]} x"#,
        br#"{"resourceLogs":[],}"#,
        b"{\"resourceLogs\":[],\"a\":\"\xff\"}",
    ] {
        let err = Batch::parse(&json_policy(), body).err();
        assert_eq!(
            err,
            Some(NotFormat("not an OTLP JSON ExportLogsServiceRequest")),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn json_deep_nesting_is_bounded() {
    // serde_json skips a raw value without recursing, so depth inside a record or an envelope
    // field costs no stack; the envelopes themselves are three levels. The scanner follows at
    // most 64 levels, so a record nested deeper before its severity is malformed.
    let deep = format!(
        r#"{{"resourceLogs":[{{"resource":{open}{close},"scopeLogs":[{{"logRecords":[{{"a":{open}{close},"severityNumber":9}}]}}]}}]}}"#,
        open = "[".repeat(100_000),
        close = "]".repeat(100_000)
    );
    let batch = Batch::parse(&json_policy(), deep.as_bytes()).unwrap();
    assert_eq!(batch.records.len(), 1);
    assert!(batch.records[0].malformed);
    assert_eq!(batch.records[0].level, Level::Trace);
}

/// ~500 records of 200–400 bytes, as a telematics fleet sends them.
fn fleet_batch() -> proto::ExportLogsServiceRequest {
    use SeverityNumber::*;
    let severities = [Debug, Debug, Info, Debug, Warn, Info, Debug, Error];
    let records: Vec<LogRecord> = (0..500u64)
        .map(|i| {
            let mut r = record(i, severities[i as usize % severities.len()], "");
            // 110–249 bytes of body: 208–376 bytes a record, the odd ones without trace context.
            r.body = Some(AnyValue::string("x".repeat(110 + (i as usize * 37) % 140)));
            r.attributes
                .push(KeyValue::string("component", format!("ecu-{}", i % 17)));
            r
        })
        .collect();
    let mut scopes = Vec::new();
    for (k, chunk) in records.chunks(100).enumerate() {
        scopes.push(scope(&format!("scope{k}"), chunk.to_vec()));
    }
    proto::ExportLogsServiceRequest {
        resource_logs: vec![resource("fleet", scopes)],
    }
}

/// The records a batch keeps, as the bytes of `body` they were parsed from.
fn kept_bytes<'b>(batch: &Batch, body: &'b [u8]) -> Vec<&'b [u8]> {
    batch
        .records
        .iter()
        .filter(|r| r.keep)
        .map(|r| &body[r.range()])
        .collect()
}

/// The fleet-sized test below is only that if its records are sized like a fleet's.
#[test]
fn the_fleet_batch_holds_500_records_of_200_to_400_bytes() {
    let req = fleet_batch();
    let sizes: Vec<usize> = all_records(&req).iter().map(|r| r.encoded_len()).collect();
    assert_eq!(sizes.len(), 500);
    assert!(sizes.iter().all(|&s| (200..=400).contains(&s)), "{sizes:?}");
}

/// The fleet-sized batch through parse, a keep-info-and-up decision and rewrite, in both
/// encodings: the same levels either way, and out comes the request with exactly the kept
/// records, each byte for byte as sent, in order. (How fast this runs is for the criterion
/// bench, `cargo bench --bench records`, not for a test.)
#[test]
fn a_fleet_sized_batch_keeps_exactly_its_info_and_up_records_in_both_encodings() {
    let req = fleet_batch();
    let mut want = req.clone();
    for sl in want
        .resource_logs
        .iter_mut()
        .flat_map(|r| &mut r.scope_logs)
    {
        sl.log_records
            .retain(|r| r.severity_number >= SeverityNumber::Info as i32);
    }
    // The severities cycle through four debug and four info-and-up: 62 whole cycles and a start
    // of one keep 249 records, and every scope of 100 keeps some.
    assert_eq!(all_records(&want).len(), 249);

    // otlp-proto
    let body = Bytes::from(req.encode_to_vec());
    let mut batch = Batch::parse_bytes(&proto_policy(), &body).unwrap();
    assert_eq!(batch.records.len(), 500);
    assert!(batch.records.iter().all(|r| !r.malformed));
    let proto_levels: Vec<Level> = batch.records.iter().map(|r| r.level).collect();
    keep_info_and_up(&mut batch.records);
    let out = batch.rewrite(&body);
    // The kept records are the sender's bytes, so the output is the expectation's encoding.
    assert_eq!(out, want.encode_to_vec());

    // otlp-json: the same records, the same levels, the same decisions.
    let json = otlp_json_of(&req);
    let mut batch = Batch::parse(&json_policy(), &json).unwrap();
    assert!(batch.records.iter().all(|r| !r.malformed));
    let json_levels: Vec<Level> = batch.records.iter().map(|r| r.level).collect();
    assert_eq!(json_levels, proto_levels);
    keep_info_and_up(&mut batch.records);
    let out = batch.rewrite(&json);
    let doc: Json = serde_json::from_slice(&json).unwrap();
    let mut flags = batch.records.iter().map(|r| r.keep);
    let got: Json = serde_json::from_slice(&out).unwrap();
    assert_eq!(got, filter_json(&doc, &mut || flags.next().unwrap()));
    let kept_in = kept_bytes(&batch, &json);
    let again = Batch::parse(&json_policy(), &out).unwrap();
    let kept_out: Vec<&[u8]> = again.records.iter().map(|r| &out[r.range()]).collect();
    assert_eq!(kept_out.len(), 249);
    assert_eq!(kept_out, kept_in);
}

/// A rough OTLP JSON rendering of `req` (string bodies and attributes only), to read the same
/// records as otlp-json.
fn otlp_json_of(req: &proto::ExportLogsServiceRequest) -> Vec<u8> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let s = |v: &Option<AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => serde_json::json!({ "stringValue": s }),
        Some(any_value::Value::IntValue(i)) => serde_json::json!({ "intValue": i.to_string() }),
        _ => serde_json::json!({}),
    };
    let kvs = |a: &[KeyValue]| {
        a.iter()
            .map(|kv| serde_json::json!({ "key": kv.key, "value": s(&kv.value) }))
            .collect::<Vec<_>>()
    };
    let record = |r: &LogRecord| {
        serde_json::json!({
            "timeUnixNano": r.time_unix_nano.to_string(),
            "severityNumber": r.severity_number,
            "severityText": r.severity_text,
            "body": s(&r.body),
            "attributes": kvs(&r.attributes),
            "traceId": hex(&r.trace_id),
            "spanId": hex(&r.span_id),
        })
    };
    let scope = |sl: &proto::ScopeLogs| {
        serde_json::json!({
            "scope": { "name": sl.scope.as_ref().unwrap().name },
            "logRecords": sl.log_records.iter().map(record).collect::<Vec<_>>(),
        })
    };
    let resource = |rl: &proto::ResourceLogs| {
        serde_json::json!({
            "resource": { "attributes": kvs(&rl.resource.as_ref().unwrap().attributes) },
            "scopeLogs": rl.scope_logs.iter().map(scope).collect::<Vec<_>>(),
        })
    };
    let doc = serde_json::json!({
        "resourceLogs": req.resource_logs.iter().map(resource).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&doc).unwrap()
}
