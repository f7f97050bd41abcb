//! Forecasting for headroom: datasets built with the featurizer's own feature code
//! ([`dataset`]), XGBoost quantile models and the peak classifier ([`xgb`]), the baselines
//! ([`baselines`]), the interpolation oracle that estimates how much error is noise ([`oracle`]),
//! accuracy metrics ([`metrics`]), the backtest ([`backtest`]) and versioned
//! model artifacts ([`artifact`]).

pub mod artifact;
pub mod backtest;
pub mod baselines;
pub mod dataset;
pub mod derived;
pub mod device;
pub mod metrics;
pub mod oracle;
pub mod serving;
pub mod xgb;

pub use dataset::{Dataset, DatasetOptions, Split, TARGETS};
pub use device::{Device, DeviceChoice};
