//! A run: the validated configuration ([`config`]), the trainer that fits a model
//! ([`trainer`]), where a run stands ([`run_state`]: position, early stopping), and
//! evaluation and prediction over data spread across ranks.

pub mod config;
pub mod evaluate;
pub mod predict;
pub mod run_state;
pub mod trainer;
