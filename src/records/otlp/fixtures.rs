//! OTLP log records, scopes and resources shaped as an OpenTelemetry SDK writes them, built with
//! the [`proto`](crate::records::otlp::proto) types. This exists so that the unit tests and the
//! integration tests build the same records from one definition; it is not part of
//! the guard's API and is hidden from its documentation.

use crate::records::otlp::proto::{
    AnyValue, InstrumentationScope, KeyValue, LogRecord, Resource, ResourceLogs, ScopeLogs,
    SeverityNumber, any_value,
};

/// The trace id the even-numbered [`record`]s carry.
pub const TRACE_ID: [u8; 16] = [
    0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c,
];

/// A log record as an SDK writes one: timestamps, severity, a string body, attributes, trace
/// context. `n` makes each record distinct: the timestamps, the body and the `speed_kmh`
/// attribute follow it. An even `n` carries [`TRACE_ID`] and a span id ending in `n`, an odd one
/// no trace context; record 4 counts a dropped attribute; records 1 and 3 are events (an
/// `event_name`).
pub fn record(n: u64, severity: SeverityNumber, text: &str) -> LogRecord {
    let traced = n.is_multiple_of(2);
    LogRecord {
        time_unix_nano: 1_718_000_000_000_000_000 + n,
        observed_time_unix_nano: 1_718_000_000_000_000_500 + n,
        severity_number: severity as i32,
        severity_text: text.to_owned(),
        body: Some(AnyValue::string(format!("vehicle event {n}"))),
        attributes: vec![
            KeyValue::string("vin", "WVWZZZ1JZXW000001"),
            KeyValue {
                key: "speed_kmh".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(80 + n as i64)),
                }),
            },
        ],
        dropped_attributes_count: u32::from(n == 4),
        flags: 1,
        trace_id: if traced {
            TRACE_ID.to_vec()
        } else {
            Vec::new()
        },
        span_id: if traced {
            vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, (n & 0xff) as u8]
        } else {
            Vec::new()
        },
        event_name: match n {
            1 => "brake.fault",
            3 => "door.opened",
            _ => "",
        }
        .into(),
    }
}

/// The scope `name` (version, an attribute, a dropped one, a schema URL) around `log_records`.
pub fn scope(name: &str, log_records: Vec<LogRecord>) -> ScopeLogs {
    ScopeLogs {
        scope: Some(InstrumentationScope {
            name: name.into(),
            version: "2.1.0".into(),
            attributes: vec![KeyValue::string("lib", name)],
            dropped_attributes_count: 1,
        }),
        log_records,
        schema_url: format!("https://example.com/scope/{name}"),
    }
}

/// The resource of `service` (its `service.name`, a `host.name`, two dropped attributes, a
/// schema URL) around `scope_logs`.
pub fn resource(service: &str, scope_logs: Vec<ScopeLogs>) -> ResourceLogs {
    ResourceLogs {
        resource: Some(Resource {
            attributes: vec![
                KeyValue::string("service.name", service),
                KeyValue::string("host.name", "tcu-7"),
            ],
            dropped_attributes_count: 2,
            entity_refs: Vec::new(),
        }),
        scope_logs,
        schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
    }
}
