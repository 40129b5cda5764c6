//! Log levels and the one table that maps what senders write to them.
//!
//! Six levels, least to most severe: `trace < debug < info < warn < error < fatal`. Every
//! spelling the guard understands is in [`Level::from_text`], [`Level::from_number`] and
//! [`Level::from_otlp_severity`]; the level table in
//! `docs/policy.md` is generated from them (`tests/docs.rs`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The one table of level spellings: [`Level::SPELLINGS`] and the `match` that
/// [`Level::from_text`] runs are both written from it, so the documented list is the accepted one.
macro_rules! spellings {
    ($($level:ident: $($spelling:literal)|+;)+) => {
        impl Level {
            /// Every lowercase spelling [`Level::from_text`] reads, by level.
            pub const SPELLINGS: &[(Level, &[&[u8]])] = &[$((Level::$level, &[$($spelling),+])),+];
        }

        fn from_spelling(lower: &[u8]) -> Option<Level> {
            Some(match lower {
                $($($spelling)|+ => Level::$level,)+
                _ => return None,
            })
        }
    };
}

spellings! {
    Trace: b"trace" | b"trc" | b"t" | b"finest" | b"finer" | b"verbose" | b"v";
    Debug: b"debug" | b"dbg" | b"d" | b"fine";
    Info: b"info" | b"inf" | b"i" | b"information" | b"informational" | b"notice" | b"n";
    Warn: b"warn" | b"warning" | b"wrn" | b"w";
    Error: b"error" | b"err" | b"e" | b"severe";
    Fatal: b"fatal" | b"ftl" | b"f" | b"critical" | b"crit" | b"alert" | b"emerg" | b"emergency"
        | b"panic";
}

/// A log level, least to most severe.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Fatal = 5,
}

impl Level {
    pub const COUNT: usize = 6;
    /// Least to most severe.
    pub const ALL: [Level; Level::COUNT] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// A level written as text, ignoring ASCII case and surrounding spaces. Digits are read
    /// as [`Level::from_number`], so `"3"` is syslog's `err`.
    pub fn from_text(text: &[u8]) -> Option<Level> {
        let t = text.trim_ascii();
        if t.is_empty() || t.len() > 13 {
            return None;
        }
        if t.iter().all(u8::is_ascii_digit) {
            return std::str::from_utf8(t)
                .ok()?
                .parse()
                .ok()
                .and_then(Level::from_number);
        }
        let mut buf = [0u8; 13];
        let lower = &mut buf[..t.len()];
        lower.copy_from_slice(t);
        lower.make_ascii_lowercase();
        from_spelling(lower)
    }

    /// A numeric level in a JSON record: syslog severities 0–7 (0 emerg … 7 debug), or the
    /// bunyan/pino scale 10, 20, …, 60 (trace … fatal). Anything else is unknown.
    pub fn from_number(n: i64) -> Option<Level> {
        Some(match n {
            0..=2 => Level::Fatal,
            3 => Level::Error,
            4 => Level::Warn,
            5 | 6 => Level::Info,
            7 => Level::Debug,
            10 => Level::Trace,
            20 => Level::Debug,
            30 => Level::Info,
            40 => Level::Warn,
            50 => Level::Error,
            60 => Level::Fatal,
            _ => return None,
        })
    }

    /// OTLP `SeverityNumber`: 1–4 trace, 5–8 debug, 9–12 info, 13–16 warn, 17–20 error,
    /// 21–24 fatal. 0 (unspecified) and out-of-range numbers are unknown.
    pub fn from_otlp_severity(n: i64) -> Option<Level> {
        match n {
            1..=24 => Some(Level::ALL[((n - 1) / 4) as usize]),
            _ => None,
        }
    }

    /// The OTLP `SeverityNumber` a record of this level gets when the guard writes one (the
    /// first number of its range).
    pub fn otlp_severity(self) -> i32 {
        self as i32 * 4 + 1
    }

    pub fn parse_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_through_one_table() {
        for (text, level) in [
            ("WARNING", Level::Warn),
            ("W", Level::Warn),
            ("warn", Level::Warn),
            (" Info ", Level::Info),
            ("err", Level::Error),
            ("ERROR", Level::Error),
            ("fatal", Level::Fatal),
            ("critical", Level::Fatal),
            ("CRIT", Level::Fatal),
            ("notice", Level::Info),
            ("dbg", Level::Debug),
            ("TRACE", Level::Trace),
            ("3", Level::Error),
            ("7", Level::Debug),
            ("30", Level::Info),
        ] {
            assert_eq!(Level::from_text(text.as_bytes()), Some(level), "{text}");
        }
        for text in [
            "",
            "loud",
            "warnings",
            "8",
            "99999999999999999999",
            "informationalx",
        ] {
            assert_eq!(Level::from_text(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn syslog_and_pino_numbers() {
        let syslog: Vec<_> = (0..=7).map(|n| Level::from_number(n).unwrap()).collect();
        use Level::*;
        assert_eq!(
            syslog,
            [Fatal, Fatal, Fatal, Error, Warn, Info, Info, Debug]
        );
        let pino: Vec<_> = (1..=6)
            .map(|n| Level::from_number(n * 10).unwrap())
            .collect();
        assert_eq!(pino, Level::ALL);
        assert_eq!(Level::from_number(8), None);
        assert_eq!(Level::from_number(-1), None);
    }

    #[test]
    fn otlp_severity_ranges() {
        assert_eq!(Level::from_otlp_severity(0), None);
        assert_eq!(Level::from_otlp_severity(25), None);
        for level in Level::ALL {
            let first = i64::from(level.otlp_severity());
            for n in first..first + 4 {
                assert_eq!(Level::from_otlp_severity(n), Some(level), "{n}");
            }
        }
        assert_eq!(Level::from_otlp_severity(9), Some(Level::Info));
        assert_eq!(Level::from_otlp_severity(17), Some(Level::Error));
    }
}
