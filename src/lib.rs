//! Stratus: declarative stream processing for cloud cost and reliability intelligence.
//!
//! Cloud telemetry (metrics, spot prices, billing line items) enters from Kafka, is decoded
//! and validated into Arrow batches, windowed and featurized with DataFusion, landed in Delta
//! Lake exactly once, scored with ONNX models, and turned into alerts and recommendations.
//!
//! One module per stage of the dataflow:
//! - [`source`]: Kafka consumers, file replays and dead letters;
//! - [`kafka`]: settings shared by every Kafka client (security, tuning, exactly-once);
//! - [`validate`]: schemas and the JSON → Arrow decoder;
//! - [`window`]: event-time windows, watermarks and lateness;
//! - [`sql`]: DataFusion sessions with Stratus's SQL functions;
//! - [`sink`]: Delta Lake tables with offsets in the commit;
//! - [`score`]: ONNX Runtime models;
//! - [`forecast`]: forecast models and the forecast stage;
//! - [`decide`]: alerts and recommendations;
//! - [`metrics`]: Prometheus metrics;
//! - [`columns`]: typed reads of a batch's columns by name;
//! - [`duration`], [`size`]: durations and sizes as users write them;
//! - [`keys`]: one text encoding of a row's key, for per-key state;
//! - [`stats`]: robust statistics shared by carried features and detectors;
//! - [`operator`]: the trait every stage implements, as the run loop drives it;
//! - [`check`]: what checking each kind of stage reads and gives, below every kind;
//! - [`pipeline`]: pipeline files, checked before anything runs;
//! - [`job`]: stages wired into runnable jobs;
//! - [`cluster`]: many workers running one pipeline, a shard per partition;
//! - [`demo`]: the embedded default job behind `stratus demo`;
//! - [`cli`]: the `stratus` command line, callable with a program's own SQL functions;
//! - [`evaluate`]: `stratus evaluate`, detectors and forecasts measured on labelled data;
//! - [`generate`]: `stratus generate`, seeded synthetic telemetry with labelled anomalies.

pub mod bench;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod columns;
pub mod console;
pub mod decide;
pub mod demo;
pub mod duration;
pub mod evaluate;
pub mod forecast;
pub mod generate;
pub mod job;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod score;
pub mod sink;
pub mod size;
pub mod source;
pub mod sql;
pub mod stats;
pub mod validate;
pub mod window;
