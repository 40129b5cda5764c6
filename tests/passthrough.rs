//! Within budget, the guard is transparent: what the client sends is what the upstream gets
//! (minus hop-by-hop headers, plus X-Forwarded-*), and back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use support::{TestGuard, TestUpstream, chunked, client, policy_with_route, read_head};

const POLICY: &str = "  - name: api\n    match: { path_prefix: /api }\n    payload:\n      max_body: 16MiB\n      client_requests: { rate: 1000/s }\n      route_bytes: { rate: 100MiB/s, burst: 32MiB }\n";

#[tokio::test]
async fn method_path_query_headers_body_and_status_pass_through() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    let body = b"{\"odometer\": 12345}".to_vec();
    let resp = client()
        .put(format!(
            "{}/api/1/vehicles/7/state?fields=a,b&x=%20y",
            g.url
        ))
        .header("x-vehicle-id", "car-7")
        .header("x-custom", "one")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-upstream-saw-path"],
        "/api/1/vehicles/7/state?fields=a,b&x=%20y"
    );
    assert_eq!(
        resp.bytes().await.unwrap(),
        body,
        "echoed body comes back byte for byte"
    );

    let seen = up.next_request().await;
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.target, "/api/1/vehicles/7/state?fields=a,b&x=%20y");
    assert_eq!(seen.body, body);
    assert_eq!(seen.headers["x-vehicle-id"], "car-7");
    assert_eq!(seen.headers["x-custom"], "one");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["content-length"], body.len().to_string());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        g.url.trim_start_matches("http://")
    );

    let resp = client()
        .get(format!("{}/__status/418", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418, "upstream statuses pass through");
}

#[tokio::test]
async fn forwarded_headers_extend_an_existing_chain() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    client()
        .get(format!("{}/x", g.url))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = up.next_request().await;
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https, http");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    let resp = client()
        .get(format!("{}/__hop", g.url))
        .header("connection", "keep-alive, x-req-hop")
        .header("x-req-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    let seen = up.next_request().await;
    for h in [
        "x-req-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
    // hyper's client may set its own Connection; what matters is the client's did not pass.
    assert!(
        seen.headers
            .get("connection")
            .is_none_or(|v| !v.to_str().unwrap().contains("x-req-hop"))
    );
    assert_eq!(seen.headers["x-end-to-end"], "kept");

    for h in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!resp.headers().contains_key(h), "{h} reached the client");
    }
    assert_eq!(resp.headers()["x-end-to-end"], "kept");
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    // 12 MiB up, with a recognizable pattern so any reordering or loss shows.
    let body: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    let resp = client()
        .post(format!("{}/api/upload", g.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.bytes().await.unwrap();
    assert!(echoed == body, "12 MiB body came back intact");
    assert!(up.next_request().await.body == body);

    // 20 MiB down, streamed by the upstream in chunks.
    let resp = client()
        .get(format!("{}/__stream/{}", g.url, 20 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 20 << 20);
}

#[tokio::test]
async fn chunked_request_bodies_are_forwarded() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    let chunks = chunked((0..64).map(|i| vec![i as u8; 1000]));
    let resp = client()
        .post(format!("{}/api/chunked", g.url))
        .body(chunks)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.next_request().await;
    assert_eq!(seen.body.len(), 64_000);
    assert_eq!(&seen.body[..1000], &[0u8; 1000][..]);
    assert_eq!(&seen.body[63_000..], &[63u8; 1000][..]);
}

#[tokio::test]
async fn http2_cleartext_clients_are_served_on_the_same_port() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(format!("{}/api/h2?q=1", g.url))
        .header("x-vehicle-id", "car-1")
        .body("hello over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello over h2");
    let seen = up.next_request().await;
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "the upstream is spoken to in HTTP/1.1"
    );
    assert_eq!(seen.target, "/api/h2?q=1");
    assert_eq!(
        seen.headers["host"],
        g.url.trim_start_matches("http://"),
        ":authority becomes Host"
    );
    assert_eq!(seen.body, "hello over h2");
}

#[tokio::test]
async fn bodies_are_streamed_not_buffered() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(POLICY), &up.url).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let request = tokio::spawn(
        client()
            .post(format!("{}/__progressive", g.url))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    // The upstream sees the first chunk while the client has not sent the second: the guard
    // forwarded it without waiting for the rest of the body.
    tx.send(Ok(vec![b'a'; 1000])).await.unwrap();
    assert_eq!(up.body_progress(1000).await, 1000);
    tx.send(Ok(vec![b'b'; 500])).await.unwrap();
    assert_eq!(up.body_progress(1500).await, 1500);
    drop(tx);

    // Downstream too: the client reads the first response chunk before the upstream has sent
    // the second one.
    let mut resp = request.await.unwrap().unwrap();
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "first");
    up.release();
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "second");
    assert!(resp.chunk().await.unwrap().is_none());
}

#[tokio::test]
async fn the_upstream_gets_an_origin_form_request_line() {
    use tokio::io::AsyncWriteExt;
    // A bare TCP upstream, so the request line is seen exactly as written on the wire.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", raw.local_addr().unwrap());
    let g = TestGuard::start(&policy_with_route(POLICY), &url).await;
    let request = tokio::spawn(client().get(format!("{}/api/x?q=1", g.url)).send());
    let (mut conn, _) = raw.accept().await.unwrap();
    let head = read_head(&mut conn).await;
    assert!(
        head.ends_with("\r\n\r\n"),
        "guard closed before sending a whole head: {head:?}"
    );
    conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    assert!(head.starts_with("GET /api/x?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "\r\nhost: {}\r\n",
            g.url.trim_start_matches("http://")
        )),
        "{head}"
    );
    assert_eq!(request.await.unwrap().unwrap().status(), 204);
}
