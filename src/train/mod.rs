//! A run: the validated configuration ([`config`]), the trainer that fits a model
//! ([`trainer`]), and evaluation and prediction over data spread across ranks.

pub mod config;
pub mod evaluate;
pub mod predict;
pub mod trainer;
