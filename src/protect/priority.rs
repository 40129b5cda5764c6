//! The priority classes traffic is protected by.

use serde::{Deserialize, Serialize};

/// How valuable a route's traffic is. Critical routes are never degraded for the sake of bulk.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    Bulk,
}

impl Priority {
    pub const COUNT: usize = 3;
    pub const ALL: [Priority; Priority::COUNT] =
        [Priority::Critical, Priority::Normal, Priority::Bulk];

    /// Position in per-class arrays: critical, normal, bulk.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }
}
