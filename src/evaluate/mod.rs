//! `stratus evaluate`: measures detectors and forecasts on labelled, held-out data.
//!
//! - [`series`]: `timestamp,value` CSV series and NAB-style label files;
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring (windows, sigmoid reward, profiles);
//! - [`detect`]: replays series through the detector ensemble with no look-ahead and scores it;
//! - [`forecast`]: forecasts on a held-out range against naive and seasonal-naive baselines.

pub mod detect;
pub mod forecast;
pub mod nab;
pub mod series;
