//! Budget balances from the ledger, for rebuilding lost or new budget periods.
//!
//! A rebuild must count every settled event, and settled events reach the ledger through
//! the outbox: so the outbox is drained first, then the period is summed. While the
//! period's marker is missing no settlement can touch its counters (the store answers
//! "unbuilt"), so nothing is settled between the sum and the rebuild.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::Ledger;
use super::writer::LedgerWriter;
use crate::limiter::budget::{SpentQuery, SpentSource};

/// The ledger, made complete by its writer before each sum.
pub struct LedgerBalances {
    pub ledger: Ledger,
    pub writer: Arc<LedgerWriter>,
}

impl SpentSource for LedgerBalances {
    fn spent(&self, query: SpentQuery) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            self.writer.drain().await.map_err(|e| e.to_string())?;
            let spent = self
                .ledger
                .spent_for(&query)
                .await
                .map_err(|e| e.to_string())?;
            // Grants can take a period's cost below zero; a counter cannot.
            Ok(u64::try_from(spent).unwrap_or(0))
        })
    }
}
