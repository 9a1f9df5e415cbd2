//! Rules: the reference's YAML rule files, compiled into a matching tree per domain.
//!
//! [`load`] reads and validates a directory into a [`RuleSet`]; [`tree`] matches request
//! descriptors against it; [`watch`] reloads it on change and swaps it atomically, keeping
//! the last good set when a reload fails.

mod file;
pub mod load;
mod pattern;
pub mod quota;
pub mod tree;
pub mod unit;
pub mod watch;

pub use load::{LoadError, LoadErrors, LoadOptions};
pub use pattern::Pattern;
pub use quota::QuotaKeys;
pub use tree::{Domain, Limit, Node, RuleSet};
pub use unit::Unit;
