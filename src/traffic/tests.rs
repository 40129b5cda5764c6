use std::io::Write as _;
use std::path::Path;

use super::*;

fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text))
        .unwrap();
    path
}

fn read_all(path: &Path, limits: Limits) -> Result<Vec<Entry>, TrafficError> {
    Traffic::open(path, limits)?.collect()
}

const NOON: u64 = (20_787 * 86_400 + 12 * 3600) * 1_000_000_000;

#[test]
fn ndjson_lines_in_every_documented_form() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bodies")).unwrap();
    write(dir.path(), "bodies/b.bin", b"\x00\xffraw");
    let text = concat!(
        r#"{"ts":"2026-11-30T12:00:00.123Z","method":"POST","path":"/api/1/telemetry?x=1","headers":{"x-vehicle-id":"car-1","content-type":"application/x-ndjson","Content-Length":"999"},"body":"{\"level\":\"info\"}\n"}"#,
        "\n\n",
        r#"{"ts":1795000000.5,"method":"GET","path":"http://api.example.com/a/b?c=d#frag","headers":{"x-tag":["one","two"]},"peer":"10.1.2.3"}"#,
        "\n",
        r#"{"ts":"2026-11-30T12:00:01Z","method":"PUT","path":"/up","body_base64":"AP9yYXc="}"#,
        "\r\n",
        r#"{"ts":"2026-11-30T12:00:02Z","method":"PUT","path":"/up","body_file":"bodies/b.bin","body_size":4096}"#,
    );
    let path = write(dir.path(), "t.ndjson", text.as_bytes());
    let traffic = Traffic::open(&path, Limits::default()).unwrap();
    assert_eq!(traffic.format(), Format::Ndjson);
    let e: Vec<Entry> = traffic.collect::<Result<_, _>>().unwrap();
    assert_eq!(e.len(), 4);

    assert_eq!(e[0].at, NOON + 123_000_000);
    assert_eq!(e[0].method, Method::POST);
    assert_eq!(e[0].target.as_str(), "/api/1/telemetry?x=1");
    assert_eq!(e[0].headers["x-vehicle-id"], "car-1");
    assert!(
        !e[0].headers.contains_key("content-length"),
        "framing is the body's"
    );
    assert_eq!(&e[0].body[..], b"{\"level\":\"info\"}\n");
    assert_eq!((e[0].body_size, e[0].is_partial()), (17, false));
    assert_eq!(e[0].peer, UNKNOWN_PEER);
    assert_eq!(e[0].place, Place::Line(1));

    assert_eq!(e[1].at, 1_795_000_000_500_000_000);
    assert_eq!(e[1].target.as_str(), "/a/b?c=d");
    let tags: Vec<_> = e[1].headers.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["one", "two"]);
    assert_eq!(e[1].peer.to_string(), "10.1.2.3");
    assert_eq!(e[1].place, Place::Line(3), "blank lines count");

    assert_eq!(&e[2].body[..], b"\x00\xffraw");
    assert_eq!(&e[3].body[..], b"\x00\xffraw");
    assert!(e[3].is_partial());
    assert_eq!(e[3].body_size, 4096);
}

#[test]
fn ndjson_problems_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"ts":1,"method":"GET","path":"/"}"#;
    let cases: &[(&str, &str)] = &[
        ("{not json", "not a JSON request object"),
        (
            r#"{"ts":1,"method":"GET","path":"/","bdy":"x"}"#,
            "unknown field `bdy`",
        ),
        (
            r#"{"ts":"yesterday","method":"GET","path":"/"}"#,
            "ts: \"yesterday\" is not an RFC 3339",
        ),
        (r#"{"ts":-5,"method":"GET","path":"/"}"#, "ts: -5 is not"),
        (
            r#"{"ts":1,"method":"G T","path":"/"}"#,
            "method: \"G T\" is not an HTTP method",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"no-slash"}"#,
            "path: \"no-slash\" is not a request target",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","headers":{"x":"a\u0001b"}}"#,
            "header \"x\"",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","headers":{"x":1}}"#,
            "not a JSON request object",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","body":"a","body_base64":"YQ=="}"#,
            "at most one of",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","body_base64":"!!"}"#,
            "body_base64: not base64",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","body_file":"missing.bin"}"#,
            "body_file",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","body":"abcdef","body_size":2}"#,
            "body_size 2 is smaller",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","peer":"car-1"}"#,
            "peer: \"car-1\"",
        ),
        (
            r#"{"ts":1,"method":"GET","path":"/","body":"0123456789abcdefX"}"#,
            "larger than 16 bytes",
        ),
    ];
    let limits = Limits {
        max_body: 16,
        ..Limits::default()
    };
    for (i, (line, expected)) in cases.iter().enumerate() {
        let path = write(
            dir.path(),
            &format!("bad{i}.ndjson"),
            format!("{good}\n{line}\n{good}\n").as_bytes(),
        );
        let err = read_all(&path, limits).unwrap_err().to_string();
        let prefix = format!("{}: line 2: ", path.display());
        assert!(err.starts_with(&prefix), "{err}");
        assert!(err.contains(expected), "{line}: {err}");
    }
}

#[test]
fn traffic_files_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let line = r#"{"ts":1,"method":"GET","path":"/"}"#;
    let path = write(
        dir.path(),
        "t.ndjson",
        format!("{line}\n{line}\n{line}\n").as_bytes(),
    );
    let few = Limits {
        max_requests: 2,
        ..Limits::default()
    };
    let err = read_all(&path, few).unwrap_err();
    assert!(
        matches!(err, TrafficError::TooManyRequests { limit: 2, .. }),
        "{err}"
    );
    let small = Limits {
        max_size: 40,
        ..Limits::default()
    };
    let err = read_all(&path, small).unwrap_err();
    assert!(
        matches!(err, TrafficError::TooLarge { limit: 40, .. }),
        "{err}"
    );
    // A line can be at most 6 x max_body + 64 KiB: a longer one is refused as it is read.
    let tiny = Limits {
        max_body: 1,
        ..Limits::default()
    };
    let long = format!(
        "{{\"ts\":1,\"method\":\"GET\",\"path\":\"/{}\"}}\n",
        "a".repeat(70_000)
    );
    let path = write(dir.path(), "long.ndjson", long.as_bytes());
    let err = read_all(&path, tiny).unwrap_err().to_string();
    assert!(
        err.contains("line 1: the line is longer than 65542 bytes"),
        "{err}"
    );
    let err = read_all(&dir.path().join("absent.ndjson"), Limits::default()).unwrap_err();
    assert!(
        err.to_string().contains("absent.ndjson: cannot read"),
        "{err}"
    );
}

#[test]
fn a_browser_har_is_read_in_time_order() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet-console.har");
    let traffic = Traffic::open(&path, Limits::default()).unwrap();
    assert_eq!(traffic.format(), Format::Har);
    let e: Vec<Entry> = traffic.collect::<Result<_, _>>().unwrap();
    assert_eq!(e.len(), 16);
    // Listed last, started first.
    assert_eq!(e[0].target.as_str(), "/favicon.ico");
    assert_eq!(e[0].place, Place::Entry(15));
    assert!(e.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(e[1].at, NOON);
    let data = &e[1];
    assert_eq!(data.method, Method::GET);
    assert_eq!(
        data.target.as_str(),
        "/api/1/vehicles/5YJ3E1EA7KF000001/vehicle_data?endpoints=charge_state%3Bdrive_state"
    );
    assert!(
        !data.headers.contains_key(":authority"),
        "pseudo-headers are left out"
    );
    assert_eq!(data.headers["x-vehicle-id"], "5YJ3E1EA7KF000001");

    let ndjson = &e[2];
    assert!(ndjson.body.starts_with(b"{\"ts\":"));
    assert_eq!(ndjson.body.iter().filter(|&&b| b == b'\n').count(), 6);
    assert!(!ndjson.is_partial());
    // postData.encoding base64: the gzip bytes, as sent; the offset form of the time.
    let gz = &e[3];
    assert_eq!(gz.at, NOON + 450_000_000);
    assert_eq!(gz.headers["content-encoding"], "gzip");
    assert_eq!(&gz.body[..2], b"\x1f\x8b");
    assert!(!gz.is_partial());
}

#[test]
fn har_problems_name_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let har = |entries: &str| {
        format!(
            "{{\"log\":{{\"version\":\"1.2\",\"creator\":{{\"name\":\"t\",\"version\":\"1\"}},\"entries\":[{entries}]}}}}"
        )
    };
    let ok = r#"{"startedDateTime":"2026-11-30T12:00:00Z","request":{"method":"GET","url":"https://h/","headers":[]}}"#;
    let bad_time =
        r#"{"startedDateTime":"noon","request":{"method":"GET","url":"https://h/","headers":[]}}"#;
    let path = write(
        dir.path(),
        "t.har",
        har(&format!("{ok},{bad_time}")).as_bytes(),
    );
    let err = read_all(&path, Limits::default()).unwrap_err().to_string();
    assert!(
        err.contains("t.har: log.entries[1]: startedDateTime: \"noon\""),
        "{err}"
    );
    let bad_url = r#"{"startedDateTime":"2026-11-30T12:00:00Z","request":{"method":"GET","url":"https://h/a b","headers":[]}}"#;
    let path = write(dir.path(), "u.har", har(bad_url).as_bytes());
    let err = read_all(&path, Limits::default()).unwrap_err().to_string();
    assert!(err.contains("log.entries[0]: request.url"), "{err}");
    let path = write(dir.path(), "v.har", b"{\"log\": {\"entries\": [{]}}");
    let err = read_all(&path, Limits::default()).unwrap_err().to_string();
    assert!(err.contains("v.har: not a HAR archive"), "{err}");
    // A BOM and white space do not hide the format.
    let path = write(
        dir.path(),
        "w.har",
        format!("\u{feff}\n  {}", har(ok)).as_bytes(),
    );
    assert_eq!(read_all(&path, Limits::default()).unwrap().len(), 1);
}

#[test]
fn recorded_lines_read_back_as_the_same_requests() {
    let mut headers = HeaderMap::new();
    headers.insert("x-vehicle-id", "car-9".parse().unwrap());
    headers.append("x-tag", "a".parse().unwrap());
    headers.append("x-tag", "b".parse().unwrap());
    let mut out = Vec::new();
    let at = NOON + 123_456_000;
    for (body, size) in [
        (&b"{\"level\":\"warn\"}\n"[..], 17),
        (&b"\x1f\x8b\x00"[..], 3),
        (&b"abc"[..], 900),
    ] {
        ndjson::write_line(
            &mut out,
            &ndjson::Record {
                at,
                method: &Method::POST,
                target: "/api/1/telemetry?x=1",
                headers: &headers,
                peer: "192.0.2.7".parse().unwrap(),
                body,
                body_size: size,
            },
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "rec.ndjson", &out);
    let e = read_all(&path, Limits::default()).unwrap();
    assert_eq!(e.len(), 3);
    for (entry, (body, size)) in e.iter().zip([
        (&b"{\"level\":\"warn\"}\n"[..], 17),
        (&b"\x1f\x8b\x00"[..], 3),
        (&b"abc"[..], 900),
    ]) {
        assert_eq!(entry.at, at);
        assert_eq!(entry.target.as_str(), "/api/1/telemetry?x=1");
        assert_eq!(entry.headers["x-vehicle-id"], "car-9");
        assert_eq!(entry.headers.get_all("x-tag").iter().count(), 2);
        assert_eq!(entry.peer.to_string(), "192.0.2.7");
        assert_eq!(&entry.body[..], body);
        assert_eq!(entry.body_size, size);
    }
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("\"body\":\"{\\\"level\\\":\\\"warn\\\"}\\n\"")
    );
    assert!(text.contains("\"body_base64\":\"H4sA\""));
}
