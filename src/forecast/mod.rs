//! Forecasting: the model and the stage that runs it in the stream.
//!
//! - [`model`]: a series' features for a forecast origin, and the registered ONNX model that
//!   maps them to quantiles of the change to come;
//! - [`stage`]: a pipeline's forecast stage — per-key hourly series, adaptive prediction
//!   intervals, and the model followed in the registry (shared with the spot recommendations).
//!
//! How forecasts are measured against the naive baselines is `evaluate::forecast`; how a
//! forecast stage is checked, `pipeline::forecast`.

pub mod model;
pub mod stage;
