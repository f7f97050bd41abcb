//! LSTM and GRU forecasters for headroom, on burn.
//!
//! * [`channels`]: the per-step inputs, one streaming encoder shared by training and serving;
//! * [`net`]: the recurrent networks (fused-gate LSTM and GRU layers, optionally stacked and
//!   bidirectional, with quantile heads that never cross);
//! * [`fast`]: the fused CPU inference kernel that serving runs (the same weights, checked
//!   against burn's forward pass), full-window and carried-state;
//! * [`model`]: fitting with early stopping and checkpoints, saving, loading and predicting;
//! * [`serve`]: scoring the featurizer's vectors (the windows come from their lags);
//! * [`backend`]: device selection (`auto | cpu | cuda`) and the burn backends.
//!
//! The models are trained and scored on the same dataset rows as the XGBoost models
//! (`headroom_forecast::Dataset`), so their scores sit side by side in one report.

pub mod backend;
pub mod channels;
pub mod fast;
mod gemm;
pub mod model;
pub mod net;
pub mod serve;

pub use model::{artifact, fit, save, score, Fitted, NeuralMeta, NeuralOptions, Predictor};
pub use net::Cell;
pub use serve::{NeuralServing, SlotFlags};

#[cfg(test)]
mod tests;
