//! Mixed precision (`--precision bf16`, Keras's `mixed_bfloat16`): the three products of each
//! dense layer (forward x W + b, backward x^T dz and dz W^T) take bf16 inputs and accumulate
//! and write f32, through oneDNN. Everything else stays f32: the master weights, the optimizer
//! state, activations and their derivatives, the loss and softmax, gradients and their sums.
//!
//! [`Bf16Gemms`] holds what the bf16 products need beside the f32 workspace: the bf16 copy of
//! the weights (refreshed once per step, after the update), bf16 copies of the layer inputs
//! and of dz, a scratch buffer, and the primitives. A primitive is made for one shape, so the
//! row count of a batch is rounded up to a multiple of [`ROW_BLOCK`] (an AMX tile's height:
//! the padding costs no extra tile work) with zero rows; the primitives for a block count are
//! made the first time it occurs, and the trainer makes those of a whole epoch before its
//! first step ([`Bf16Gemms::prepare`]), so a step never creates one.

use crate::engine::bf16;
use crate::engine::onednn::{self, Bf16Unit, Matmul, Shape};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Arithmetic of the dense layers' products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 everywhere (OpenBLAS sgemm).
    #[default]
    Fp32,
    /// bf16 product inputs, f32 accumulation and everything else (oneDNN on AMX/AVX512-BF16).
    Bf16,
}

crate::flag_value_display!(Precision);

/// Rows are padded to a multiple of this (the height of an AMX tile).
pub const ROW_BLOCK: usize = 16;

/// `rows` rounded up to a multiple of [`ROW_BLOCK`].
pub fn padded(rows: usize) -> usize {
    rows.div_ceil(ROW_BLOCK) * ROW_BLOCK
}

/// The three products of one dense layer for one padded row count.
struct LayerProducts {
    /// y = x W + b: x (rows, in), W (in, out).
    forward: Matmul,
    /// dW = x^T dz: x stored (rows, in), dz (rows, out).
    weights_grad: Matmul,
    /// dx = dz W^T: dz (rows, out), W stored (in, out). None for the first dense layer.
    input_grad: Option<Matmul>,
}

/// One dense layer's dimensions and its products by row block (index = padded rows / 16 - 1).
struct DenseProducts {
    in_dim: usize,
    out_dim: usize,
    first: bool,
    by_block: Vec<Option<LayerProducts>>,
}

/// The bf16 side of a workspace (see the module comment). Buffers are sized for the padded
/// maximum batch.
pub struct Bf16Gemms {
    /// The CPU's bf16 unit the products run on.
    pub unit: Bf16Unit,
    /// bf16 copy of the flat parameter buffer (only the kernels' spans are used): (n_params,).
    pub weights: Vec<u16>,
    /// bf16 copy of the input of each layer that feeds a dense layer, by the index of the
    /// layer that PRODUCED it (`inputs[0]` is the model input x): (padded rows, width).
    pub inputs: Vec<Vec<u16>>,
    /// bf16 dz of the current layer: (padded rows, widest layer).
    pub delta: Vec<u16>,
    scratch: Vec<u8>,
    dense: Vec<DenseProducts>,
    max_rows: usize,
}

impl Bf16Gemms {
    /// `dense`: (in_dim, out_dim) of each dense layer in order; `input_widths[i]`: the width
    /// of the bf16 copy kept of layer input i (0 = the model input, i = output of layer i-1),
    /// or None when no dense layer reads it. Fails with the `--precision` error when the CPU
    /// has no bf16 unit.
    pub fn new(
        n_params: usize,
        dense: &[(usize, usize)],
        input_widths: &[Option<usize>],
        widest: usize,
        max_rows: usize,
    ) -> Result<Bf16Gemms> {
        let unit = onednn::bf16_unit()?;
        let cap = padded(max_rows.max(1));
        let blocks = cap / ROW_BLOCK;
        Ok(Bf16Gemms {
            unit,
            weights: vec![0; n_params],
            inputs: input_widths.iter().map(|w| w.map_or(Vec::new(), |w| vec![0; cap * w])).collect(),
            delta: vec![0; cap * widest],
            scratch: Vec::new(),
            dense: dense
                .iter()
                .enumerate()
                .map(|(i, &(in_dim, out_dim))| DenseProducts {
                    in_dim,
                    out_dim,
                    first: i == 0,
                    by_block: (0..blocks).map(|_| None).collect(),
                })
                .collect(),
            max_rows,
        })
    }

    /// Makes the products for batches of `rows` rows if they do not exist yet. Returns whether
    /// it made any (never within a training step: the trainer calls this for every batch of an
    /// epoch first).
    pub fn prepare(&mut self, rows: usize) -> Result<bool> {
        if rows == 0 {
            return Ok(false);
        }
        assert!(rows <= self.max_rows, "batch of {rows} rows exceeds the workspace's {}", self.max_rows);
        let m = padded(rows);
        let block = m / ROW_BLOCK - 1;
        let mut made = false;
        for d in &mut self.dense {
            if d.by_block[block].is_some() {
                continue;
            }
            let (i, o) = (d.in_dim, d.out_dim);
            let make = |s: Shape| {
                Matmul::new(s)
                    .map_err(|e| Error::flag("precision", format!("a {}x{}x{} bf16 product: {e}", s.m, s.k, s.n)))
            };
            let products = LayerProducts {
                forward: make(Shape { m, k: i, n: o, trans_a: false, trans_b: false, bias: true })?,
                weights_grad: make(Shape { m: i, k: m, n: o, trans_a: true, trans_b: false, bias: false })?,
                input_grad: if d.first {
                    None
                } else {
                    Some(make(Shape { m, k: o, n: i, trans_a: false, trans_b: true, bias: false })?)
                },
            };
            let need = [Some(&products.forward), Some(&products.weights_grad), products.input_grad.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| p.scratch_bytes)
                .max()
                .unwrap_or(0);
            if need > self.scratch.len() {
                self.scratch.resize(need, 0);
            }
            d.by_block[block] = Some(products);
            made = true;
        }
        Ok(made)
    }

    /// oneDNN's implementation of each dense layer's products at `rows` rows ("forward
    /// brg:avx512_core_amx_bf16, ..."), for the start-up summary. Makes them if needed.
    pub fn implementations(&mut self, rows: usize) -> Result<Vec<String>> {
        self.prepare(rows)?;
        let block = padded(rows) / ROW_BLOCK - 1;
        let mut names: Vec<String> = Vec::new();
        for d in &self.dense {
            let p = d.by_block[block].as_ref().expect("prepared above");
            for m in [Some(&p.forward), Some(&p.weights_grad), p.input_grad.as_ref()].into_iter().flatten() {
                if !names.contains(&m.implementation) {
                    names.push(m.implementation.clone());
                }
            }
        }
        Ok(names)
    }

    /// Makes the products for `rows` if a batch of that size has not occurred before: only
    /// outside training steps (evaluation, prediction), whose batch sizes are not planned.
    fn ensure(&mut self, dense: usize, rows: usize) {
        if self.dense[dense].by_block[padded(rows) / ROW_BLOCK - 1].is_none() {
            // Creation failed where it had worked for other shapes: nothing to recover.
            if let Err(e) = self.prepare(rows) {
                panic!("{e}");
            }
        }
    }

    /// Copies the kernels in `spans` of the f32 parameters into the bf16 weights. Call after
    /// every change of the parameters (once per step, after the update).
    pub fn refresh_weights(&mut self, params: &[f32], spans: impl Iterator<Item = std::ops::Range<usize>>) {
        for r in spans {
            bf16::convert(&params[r.clone()], &mut self.weights[r]);
        }
    }

    /// Stores bf16(src) for `rows` rows of `width` into `dst`, and zeros up to the padded
    /// row count (zero rows add nothing to x^T dz, and keep NaN out of the padding).
    pub fn convert_rows(src: &[f32], dst: &mut [u16], rows: usize, width: usize) {
        bf16::convert(&src[..rows * width], &mut dst[..rows * width]);
        dst[rows * width..padded(rows) * width].fill(0);
    }

    /// out (padded rows, out_dim) = input (padded rows, in_dim) W + b, for dense layer `dense`
    /// whose bf16 input is `self.inputs[input]`. `out` must hold padded(rows) * out_dim.
    pub fn forward(
        &mut self,
        dense: usize,
        input: usize,
        kernel: std::ops::Range<usize>,
        bias: &[f32],
        rows: usize,
        out: &mut [f32],
    ) {
        if rows == 0 {
            return;
        }
        self.ensure(dense, rows);
        let p = self.dense[dense].by_block[padded(rows) / ROW_BLOCK - 1].as_ref().expect("prepared");
        p.forward.run(&self.inputs[input], &self.weights[kernel], Some(bias), out, &mut self.scratch);
    }

    /// grad (in_dim, out_dim) = input^T dz, with dz in `self.delta` (converted by the caller
    /// with [`Bf16Gemms::convert_rows`]).
    pub fn weights_grad(&mut self, dense: usize, input: usize, rows: usize, grad: &mut [f32]) {
        if rows == 0 {
            grad.fill(0.0);
            return;
        }
        self.ensure(dense, rows);
        let p = self.dense[dense].by_block[padded(rows) / ROW_BLOCK - 1].as_ref().expect("prepared");
        p.weights_grad.run(&self.inputs[input], &self.delta, None, grad, &mut self.scratch);
    }

    /// dx (padded rows, in_dim) = dz W^T. `dx` must hold padded(rows) * in_dim.
    pub fn input_grad(&mut self, dense: usize, kernel: std::ops::Range<usize>, rows: usize, dx: &mut [f32]) {
        if rows == 0 {
            return;
        }
        self.ensure(dense, rows);
        let p = self.dense[dense].by_block[padded(rows) / ROW_BLOCK - 1].as_ref().expect("prepared");
        let m = p.input_grad.as_ref().expect("only the first dense layer has no input gradient");
        m.run(&self.delta, &self.weights[kernel], None, dx, &mut self.scratch);
    }
}
