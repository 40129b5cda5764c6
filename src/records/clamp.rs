//! The request verbosity clamp: a level the client asks for (`x-log-level: trace`,
//! `?log_level=debug`) above the route's `max` is rewritten to `max` before the upstream sees it.

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};

use super::Level;

pub struct Clamp {
    pub header: Option<HeaderName>,
    pub query: Option<Box<str>>,
    pub max: Level,
}

impl Clamp {
    /// Rewrites the header and the query parameter in place when they ask for more than `max`.
    /// Values that are not levels are left alone. Returns how many values were lowered.
    pub fn apply(&self, headers: &mut http::HeaderMap, uri: &mut Uri) -> u32 {
        let mut clamped = 0;
        if let Some(name) = &self.header {
            for value in headers.get_all(name).iter() {
                if self.too_verbose(value.as_bytes()) {
                    clamped += 1;
                }
            }
            if clamped > 0 {
                headers.insert(name.clone(), HeaderValue::from_static(self.max.as_str()));
            }
        }
        if let (Some(param), Some(query)) = (&self.query, uri.query()) {
            let mut lowered = 0;
            let rewritten: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) if k == &**param && self.too_verbose(v.as_bytes()) => {
                        lowered += 1;
                        format!("{k}={}", self.max)
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            if lowered > 0 {
                let target = format!("{}?{}", uri.path(), rewritten.join("&"));
                // The parts came from a valid URI and the new value is a level name.
                if let Ok(pq) = PathAndQuery::try_from(target) {
                    *uri = Uri::from(pq);
                    clamped += lowered;
                }
            }
        }
        clamped
    }

    /// How many values [`Clamp::apply`] would lower, changing nothing (shadow mode).
    pub fn count(&self, headers: &http::HeaderMap, uri: &Uri) -> u32 {
        let header = self.header.iter().flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .filter(|v| self.too_verbose(v.as_bytes()))
        });
        let query = match (&self.query, uri.query()) {
            (Some(param), Some(query)) => query
                .split('&')
                .filter(|pair| {
                    pair.split_once('=')
                        .is_some_and(|(k, v)| k == &**param && self.too_verbose(v.as_bytes()))
                })
                .count(),
            _ => 0,
        };
        u32::try_from(header.count() + query).unwrap_or(u32::MAX)
    }

    fn too_verbose(&self, value: &[u8]) -> bool {
        Level::from_text(value).is_some_and(|l| l < self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clamp() -> Clamp {
        Clamp {
            header: Some(HeaderName::from_static("x-log-level")),
            query: Some("log_level".into()),
            max: Level::Info,
        }
    }

    #[test]
    fn lowers_too_verbose_levels_only() {
        let c = clamp();
        let mut h = http::HeaderMap::new();
        h.insert("x-log-level", HeaderValue::from_static("TRACE"));
        let mut uri: Uri = "/cfg?a=1&log_level=debug&b=2".parse().unwrap();
        assert_eq!(c.count(&h, &uri), 2, "count says what apply will do");
        assert_eq!(h["x-log-level"], "TRACE");
        assert_eq!(c.apply(&mut h, &mut uri), 2);
        assert_eq!(h["x-log-level"], "info");
        assert_eq!(uri.to_string(), "/cfg?a=1&log_level=info&b=2");

        for ok in ["warn", "info", "loud"] {
            let mut h = http::HeaderMap::new();
            h.insert("x-log-level", HeaderValue::from_static(ok));
            let mut uri: Uri = format!("/cfg?log_level={ok}").parse().unwrap();
            assert_eq!(c.count(&h, &uri), 0, "{ok}");
            assert_eq!(c.apply(&mut h, &mut uri), 0, "{ok}");
            assert_eq!(h["x-log-level"], ok);
        }
    }
}
