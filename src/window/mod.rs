//! Event-time windows: tumble, hop and session windows written in SQL, watermarks from
//! bounded out-of-orderness with idle partitions, allowed lateness with updates, and a late
//! side output.
//!
//! - [`spec`]: the window in a stage's `GROUP BY`, and the query rewritten for DataFusion;
//! - [`watermark`]: per-partition watermark tracking;
//! - [`operator`]: the stateful operator that fires windows as the watermark passes them;
//! - [`config`]: a SQL stage as written (with a window stage's `carry` and `replace_by`),
//!   and its check: the query planned against its input;
//! - [`carry`]: features carried across a stage's windows per key (EWMA, delta, rate of
//!   change, robust z-score against a trailing baseline).

pub mod carry;
pub mod config;
pub mod operator;
pub mod spec;
pub mod watermark;

#[cfg(test)]
mod tests;

pub use carry::{CarryOperator, CarrySpec};
pub use operator::{WINDOW_COLUMNS, WindowError, WindowOperator, windowed_schema};
pub use spec::{WindowSpec, WindowedQuery, parse_stage_sql};
pub use watermark::WatermarkTracker;
