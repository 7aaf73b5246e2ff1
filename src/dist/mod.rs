//! Running as many ranks: the one module that talks to MPI ([`comm`]), which rows each rank
//! trains on at each step ([`batch_plan`]), how a step's gradients are summed
//! ([`gradient_sum`]), how many BLAS threads each rank gets
//! ([`threads`]), the signals that make every rank stop at the same step ([`signals`]), and
//! how long the launcher gives the ranks to stop ([`kill_grace`]).

pub mod batch_plan;
pub mod comm;
pub mod gradient_sum;
pub mod kill_grace;
pub mod signals;
pub mod threads;
