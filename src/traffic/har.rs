//! HAR 1.2 archives (<http://www.softwareishard.com/blog/har-12-spec/>), as browsers' developer
//! tools, proxies (Charles, mitmproxy, Fiddler) and load tools export them.
//!
//! Read from each of `log.entries[]`: `startedDateTime` (RFC 3339), `request.method`,
//! `request.url` (its path and query), `request.headers[]` (HTTP/2 pseudo-headers such as
//! `:authority` are left out, as are `content-length` and `transfer-encoding`),
//! `request.postData.text`, base64-decoded when `postData.encoding` is `base64` (an extension
//! some exporters write), and `request.bodySize` when it says the body was larger than the text
//! kept. `postData.mimeType` becomes the `content-type` when the headers have none. Everything
//! else (pages, responses, timings, cookies, ...) is ignored. HAR has no client address: every
//! request comes from the same unknown peer. Entries are replayed in `startedDateTime` order.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;

use super::{
    Entry, EntryError, Limits, Place, TrafficError, UNKNOWN_PEER, add_header, check_body,
    decode_base64, parse_method, parse_target, time,
};

#[derive(Deserialize)]
struct Har<'a> {
    #[serde(borrow)]
    log: Log<'a>,
}

#[derive(Deserialize)]
struct Log<'a> {
    #[serde(borrow, default)]
    entries: Vec<HarEntry<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HarEntry<'a> {
    #[serde(borrow)]
    started_date_time: Cow<'a, str>,
    #[serde(borrow)]
    request: Request<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    headers: Vec<Header<'a>>,
    #[serde(borrow)]
    post_data: Option<PostData<'a>>,
    body_size: Option<i64>,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostData<'a> {
    #[serde(borrow)]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    encoding: Option<Cow<'a, str>>,
}

/// Every entry of a HAR archive, in `startedDateTime` order (stable for equal times).
pub fn read(text: &[u8], file: &str, limits: Limits) -> Result<Vec<Entry>, TrafficError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let har: Har = serde_json::from_slice(text).map_err(|source| TrafficError::Har {
        file: file.to_owned(),
        source,
    })?;
    if har.log.entries.len() as u64 > limits.max_requests {
        return Err(TrafficError::TooManyRequests {
            file: file.to_owned(),
            limit: limits.max_requests,
        });
    }
    let mut entries = har
        .log
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            entry(e, Place::Entry(i), limits).map_err(|source| TrafficError::Entry {
                file: file.to_owned(),
                place: Place::Entry(i),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.at);
    Ok(entries)
}

fn entry(e: &HarEntry, place: Place, limits: Limits) -> Result<Entry, EntryError> {
    let at = time::parse_rfc3339(&e.started_date_time).ok_or_else(|| EntryError::Time {
        field: "startedDateTime",
        value: format!("{:?}", e.started_date_time),
    })?;
    let r = &e.request;
    let method = parse_method("request.method", &r.method)?;
    let target = parse_target("request.url", &r.url)?;
    let mut headers = HeaderMap::new();
    for h in r.headers.iter().filter(|h| !h.name.starts_with(':')) {
        add_header(&mut headers, &h.name, &h.value)?;
    }
    let post = r.post_data.as_ref();
    let body = match post.and_then(|p| p.text.as_deref()) {
        None => Bytes::new(),
        Some(text) if post.and_then(|p| p.encoding.as_deref()) == Some("base64") => {
            decode_base64("request.postData.text", text, limits.max_body)?
        }
        Some(text) => {
            check_body(text.len() as u64, limits.max_body)?;
            Bytes::copy_from_slice(text.as_bytes())
        }
    };
    if !headers.contains_key(http::header::CONTENT_TYPE)
        && let Some(mime) = post
            .and_then(|p| p.mime_type.as_deref())
            .filter(|m| !m.is_empty())
    {
        add_header(&mut headers, "content-type", mime)?;
    }
    // bodySize is -1 when unknown; exporters disagree on whether it counts an encoding, so it
    // only ever raises the size (a body the archive did not keep whole).
    let declared = r.body_size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let body_size = declared.max(body.len() as u64);
    Ok(Entry {
        at,
        method,
        target,
        headers,
        body,
        body_size,
        peer: UNKNOWN_PEER,
        place,
    })
}
