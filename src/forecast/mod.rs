//! Forecasting: the model and the stage that runs it in the stream.
//!
//! - [`model`]: a series' features for a forecast origin, and the registered ONNX model that
//!   maps them to quantiles of the change to come;
//! - [`config`]: a forecast stage as written in a pipeline file, and its check;
//! - [`blend`]: per key and horizon, the choice among the model and simple forecasters by
//!   their recent errors on that key, and intervals from the key's own errors;
//! - [`accuracy`]: forecasts against the actuals that came, as Prometheus counters;
//! - [`stage`]: a pipeline's forecast stage — per-key hourly series, the blend, and the model
//!   followed in the registry (shared with the spot recommendations).
//!
//! How forecasts are measured against the naive baselines is `evaluate::forecast`; how a
//! forecast stage is written and checked, [`config`].

pub mod accuracy;
pub mod blend;
pub mod config;
pub mod model;
pub mod stage;
