//! The rules a body is held to as it streams, frame by frame: what cannot be decided from the
//! request head because the body's length was not declared (or the declaration lies).

use governor::clock::{Clock, DefaultClock};

use super::Reject;
use crate::budget::ByteCharge;

/// `max_body` for a body without a trustworthy length, and the byte budgets of a body whose
/// length was not declared (a declared one was charged by [`admit`](super::admit)).
pub struct BodyRules<C: Clock = DefaultClock> {
    /// Most bytes let through.
    limit: Option<u64>,
    seen: u64,
    charge: ByteCharge<C>,
}

impl<C: Clock> BodyRules<C> {
    pub fn new(limit: Option<u64>, charge: ByteCharge<C>) -> Self {
        BodyRules {
            limit,
            seen: 0,
            charge,
        }
    }

    /// No rule: the body is only streamed.
    pub fn none() -> Self {
        BodyRules::new(None, ByteCharge::default())
    }

    /// `n` more bytes arrived. Refuses the frame that crosses the limit or runs out of a byte
    /// budget; bytes already let through stay charged.
    pub fn data(&mut self, n: u64) -> Result<(), Reject> {
        self.seen = self.seen.saturating_add(n);
        if let Some(limit) = self.limit
            && self.seen > limit
        {
            return Err(Reject::BodyTooLarge { limit });
        }
        if !self.charge.is_empty() {
            self.charge.charge(n)?;
        }
        Ok(())
    }

    /// Stops checking: a shadow route's body after enforce mode would have refused it, since
    /// enforce mode decides nothing past a refusal.
    pub fn disarm(&mut self) {
        self.limit = None;
        self.charge = ByteCharge::default();
    }
}
