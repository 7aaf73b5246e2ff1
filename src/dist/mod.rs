//! Running as many ranks: the one module that talks to MPI ([`comm`]), which rows each rank
//! trains on at each step ([`batch_plan`]), how a step's gradients are summed
//! ([`gradient_sum`]), how many BLAS threads each rank gets
//! ([`threads`]), and the signals that make every rank stop at the same step ([`signals`]).

pub mod batch_plan;
pub mod comm;
pub mod gradient_sum;
pub mod signals;
pub mod threads;
