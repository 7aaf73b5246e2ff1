//! Mixed precision (`--precision bf16`, Keras's `mixed_bfloat16`): the three products of each
//! dense layer (forward x W + b, backward x^T dz and dz W^T) take bf16 inputs and accumulate
//! and write f32, through oneDNN (the backward products of layers with at most
//! [`narrow::NARROW_MAX_OUT`] outputs through nn-train's own kernels, which oneDNN's tiles do
//! not suit). Everything else stays f32: the master weights, the optimizer state, activations
//! and their derivatives, the loss and softmax, gradients and their sums.
//!
//! [`Bf16Gemms`] holds what the bf16 products need beside the f32 workspace: the bf16 copy of
//! the weights (refreshed once per step, after the update), bf16 copies of the layer inputs
//! and of dz, a scratch buffer, and the primitives. A primitive is made for one shape, so the
//! row count of a batch is rounded up to a multiple of [`ROW_BLOCK`] (an AMX tile's height:
//! the padding costs no extra tile work) with zero rows; the primitives for a block count are
//! made the first time it occurs, and the trainer makes those of a whole epoch before its
//! first step ([`Bf16Gemms::prepare`]), so a step never creates one.

use crate::engine::activation::Activation;
use crate::engine::aligned::{Aligned, Flat};
use crate::engine::bf16;
use crate::engine::bf16_weights::Bf16Layout;
use crate::engine::narrow;
use crate::engine::onednn::{self, Bf16Unit, Matmul, PackedWeights, Shape};
use crate::engine::parallel::{part_range, Disjoint, Parallel};
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

/// Values per block of the fused element-wise passes ([`activate_rows`], [`delta_rows`]): 16 KB
/// of f32, so that what one step of a pass writes is still in the core's L1 data cache (48 KB
/// and more) when the next step reads it, and a layer's activations or deltas stream through
/// L2 once instead of once per step.
const BLOCK_VALUES: usize = 4096;

/// Whole rows of `width` in one block (at least one).
fn block_len(width: usize) -> usize {
    (BLOCK_VALUES / width.max(1)).max(1) * width
}

/// Columns of a part of a pass split by columns: a multiple of this, so that no two parts
/// write one cache line of f32 or bf16 values.
const COLUMN_ALIGN: usize = 32;

/// The forward pass's element-wise work on a dense layer's product, in one sweep over `out`
/// (rows, width), block of whole rows by block: copies z into `pre` when the activation's
/// backward pass needs it ((rows, width), else None), applies `activation` in place, and
/// stores the bf16 copy of the result in `bf` when a dense layer reads it next ((padded rows,
/// width) or more; else None), zeroing its padding rows. Each value goes through the same
/// operations as in the separate passes, so the results are the same bits. Large passes are
/// split by rows over `pool`'s threads (the same bits too: each row is computed alone).
pub fn activate_rows(
    pool: &Parallel,
    activation: Activation,
    out: &mut [f32],
    width: usize,
    pre: Option<&mut [f32]>,
    bf: Option<&mut [u16]>,
) {
    let n = out.len();
    let rows = n / width.max(1);
    let pre = pre.map(|p| &mut p[..n]);
    let bf = bf.map(|bf| {
        bf[n..padded(rows) * width].fill(0);
        &mut bf[..n]
    });
    let (out, pre, bf) = (Disjoint::new(out), pre.map(Disjoint::new), bf.map(Disjoint::new));
    pool.run_by_rows(rows, width, ROW_BLOCK, &|r| {
        let at = r.start * width..r.end * width;
        // SAFETY: the pieces are disjoint rows.
        unsafe {
            activate_block(
                activation,
                out.piece(at.clone()),
                width,
                pre.as_ref().map(|p| p.piece(at.clone())),
                bf.as_ref().map(|b| b.piece(at.clone())),
            )
        }
    });
}

/// [`activate_rows`] on whole rows, on the calling thread: `pre` and `bf` as long as `out`.
fn activate_block(
    activation: Activation,
    out: &mut [f32],
    width: usize,
    mut pre: Option<&mut [f32]>,
    mut bf: Option<&mut [u16]>,
) {
    if let (Activation::Relu, None, Some(bf)) = (activation, pre.as_ref(), bf.as_deref_mut()) {
        // The common case in a single pass, without the round trip through L1.
        bf16::relu_and_convert(out, bf);
        return;
    }
    let step = block_len(width);
    for (b, chunk) in out.chunks_mut(step).enumerate() {
        let at = b * step..b * step + chunk.len();
        if let Some(pre) = pre.as_deref_mut() {
            pre[at.clone()].copy_from_slice(chunk);
        }
        activation.forward(chunk, width);
        if let Some(bf) = bf.as_deref_mut() {
            bf16::convert(chunk, &mut bf[at]);
        }
    }
}

/// The backward pass's element-wise work on a dense layer's delta, in one sweep over `dy`
/// (rows, width), block of whole rows by block: dz = dL/dz from dL/dy through `activation`'s
/// derivative (None: `dy` already holds dz, a loss fused with its output activation), its
/// bf16 copy into `bf` ((padded rows, width) or more) zeroing the padding rows, and the bias
/// gradient db = the column sums of dz, (width,), overwriting it. `dy` is scratch: afterwards
/// it holds dz or still dL/dy (relu's single pass does not store dz in f32; nothing reads it
/// after, the products take its bf16 copy). `z`: the pre-activations (rows, width) when the
/// activation needs them, else empty; `y`: the layer's outputs (rows, width). Same operations
/// per value, and the sums in the same row order, as the separate passes: the same bits.
/// Large passes are split over `pool`'s threads by columns (each sum still runs over the
/// rows in order), after the derivative split by rows: the same bits again.
#[allow(clippy::too_many_arguments)]
pub fn delta_rows(
    pool: &Parallel,
    activation: Option<Activation>,
    z: &[f32],
    y: &[f32],
    dy: &mut [f32],
    width: usize,
    bf: &mut [u16],
    db: &mut [f32],
) {
    db.fill(0.0);
    let n = dy.len();
    let rows = n / width.max(1);
    bf[n..padded(rows) * width].fill(0);
    let bf = &mut bf[..n];
    let relu = activation == Some(Activation::Relu);
    let parts = pool.parts_for(n);
    if parts == 1 {
        if relu {
            bf16::relu_delta_convert_and_sum_columns(y, dy, bf, db);
            return;
        }
        let step = block_len(width);
        for (b, chunk) in dy.chunks_mut(step).enumerate() {
            let at = b * step..b * step + chunk.len();
            if let Some(a) = activation {
                let z = if a.needs_input() { &z[at.clone()] } else { &[] };
                a.backward(z, &y[at.clone()], chunk, width);
            }
            bf16::convert_and_sum_columns(chunk, &mut bf[at], db);
        }
        return;
    }
    if let (Some(a), false) = (activation, relu) {
        let d = Disjoint::new(&mut *dy);
        pool.run_by_rows(rows, width, ROW_BLOCK, &|r| {
            let at = r.start * width..r.end * width;
            let z = if a.needs_input() { &z[at.clone()] } else { &[] };
            // SAFETY: the pieces are disjoint rows.
            a.backward(z, &y[at.clone()], unsafe { d.piece(at) }, width);
        });
    }
    let dy: &[f32] = dy;
    let (bf, db) = (Disjoint::new(bf), Disjoint::new(db));
    pool.run(&|part| {
        let cols = part_range(width, parts, part, COLUMN_ALIGN);
        if cols.is_empty() {
            return;
        }
        // SAFETY: the parts take disjoint columns, of db and of every row of bf.
        let db = unsafe { db.piece(cols.clone()) };
        for r in 0..rows {
            let at = r * width + cols.start..r * width + cols.end;
            // SAFETY: as above.
            let bf = unsafe { bf.piece(at.clone()) };
            if relu {
                bf16::relu_delta_convert_and_sum_columns(&y[at.clone()], &dy[at], bf, db);
            } else {
                bf16::convert_and_sum_columns(&dy[at], bf, db);
            }
        }
    });
}

/// The three products of one dense layer for one padded row count.
struct LayerProducts {
    /// y = x W + b: x (rows, in), W (in, out).
    forward: Matmul,
    /// dW = x^T dz: x stored (rows, in), dz (rows, out). None for a narrow layer (see
    /// [`narrow`]).
    weights_grad: Option<Matmul>,
    /// dx = dz W^T: dz (rows, out), W stored (in, out). None for the first dense layer and for
    /// a narrow one.
    input_grad: Option<Matmul>,
}

/// One dense layer's dimensions and its products by row block (index = padded rows / 16 - 1).
struct DenseProducts {
    in_dim: usize,
    out_dim: usize,
    first: bool,
    /// The kernel's values in the flat parameter buffer.
    kernel: std::ops::Range<usize>,
    /// The layout its forward products read the kernel in, when packed.
    packed: Option<PackedWeights>,
    by_block: Vec<Option<LayerProducts>>,
}

/// Environment variable that keeps every kernel's bf16 copy plain (a knob to measure and test
/// the packed copy against).
pub const PLAIN_WEIGHTS_VAR: &str = "NN_TRAIN_PLAIN_BF16_WEIGHTS";

/// The bf16 side of a workspace (see the module comment). Buffers are sized for the padded
/// maximum batch.
pub struct Bf16Gemms {
    /// The CPU's bf16 unit the products run on.
    pub unit: Bf16Unit,
    /// bf16 copy of the parameters (only the kernels' values are used), laid out by `layout`.
    /// Ranks that share their parameters on a node share this copy too.
    pub weights: Flat<u16>,
    /// Where each parameter's bf16 copy is: plain, index for index, and for the kernels of
    /// forward products that oneDNN reads packed, in its packed layout.
    pub layout: Bf16Layout,
    /// bf16 copy of the input of each layer that feeds a dense layer, by the index of the
    /// layer that PRODUCED it (`inputs[0]` is the model input x): (padded rows, width).
    pub inputs: Vec<Aligned<u16>>,
    /// bf16 dz of the current layer: (padded rows, widest layer).
    pub delta: Aligned<u16>,
    scratch: Vec<u8>,
    /// The narrow layers' products' scratch (see [`narrow::scratch_len`]): one part's of
    /// `narrow_len` floats for each thread of [`Bf16Gemms::reserve_parts`].
    narrow_scratch: Aligned<f32>,
    narrow_len: usize,
    dense: Vec<DenseProducts>,
    max_rows: usize,
}

impl Bf16Gemms {
    /// `dense`: (in_dim, out_dim, kernel span in the flat buffer) of each dense layer in
    /// order; `input_widths[i]`: the width
    /// of the bf16 copy kept of layer input i (0 = the model input, i = output of layer i-1),
    /// or None when no dense layer reads it. Fails with the `--precision` error when the CPU
    /// has no bf16 unit.
    pub fn new(
        n_params: usize,
        dense: &[(usize, usize, std::ops::Range<usize>)],
        input_widths: &[Option<usize>],
        widest: usize,
        max_rows: usize,
    ) -> Result<Bf16Gemms> {
        let plain_only = std::env::var(PLAIN_WEIGHTS_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
        Bf16Gemms::with_packing(n_params, dense, input_widths, widest, max_rows, !plain_only)
    }

    /// [`Bf16Gemms::new`], with the forward products' kernels packed when oneDNN prefers
    /// that and `pack` allows it.
    fn with_packing(
        n_params: usize,
        dense: &[(usize, usize, std::ops::Range<usize>)],
        input_widths: &[Option<usize>],
        widest: usize,
        max_rows: usize,
        pack: bool,
    ) -> Result<Bf16Gemms> {
        let unit = onednn::bf16_unit()?;
        let cap = padded(max_rows.max(1));
        let blocks = cap / ROW_BLOCK;
        // The layout oneDNN prefers for a full batch serves every batch size (it depends on
        // the weights' shape only). Narrow layers stay plain: their products read W^T.
        let mut packed = Vec::with_capacity(dense.len());
        for &(i, o, _) in dense {
            let wide = o > narrow::NARROW_MAX_OUT;
            packed.push(if wide && pack { onednn::packed_weights(cap, i, o)? } else { None });
        }
        let layout = Bf16Layout::new(
            n_params,
            dense.iter().zip(&packed).enumerate().filter_map(|(l, ((_, _, span), p))| {
                // dx = dz W^T reads the plain copy; the first layer has no dx.
                p.as_ref().map(|p| (span.clone(), p.packing, l > 0))
            }),
        );
        let narrow_len = dense
            .iter()
            .filter(|&&(_, o, _)| o <= narrow::NARROW_MAX_OUT)
            .map(|&(i, o, _)| narrow::scratch_len(cap, i, o))
            .max()
            .unwrap_or(0);
        Ok(Bf16Gemms {
            unit,
            weights: Flat::Owned(Aligned::new(layout.len())),
            layout,
            inputs: input_widths.iter().map(|w| Aligned::new(w.map_or(0, |w| cap * w))).collect(),
            delta: Aligned::new(cap * widest),
            scratch: Vec::new(),
            narrow_scratch: Aligned::new(narrow_len),
            narrow_len,
            dense: dense
                .iter()
                .zip(packed)
                .enumerate()
                .map(|(i, (&(in_dim, out_dim, ref kernel), packed))| DenseProducts {
                    in_dim,
                    out_dim,
                    first: i == 0,
                    kernel: kernel.clone(),
                    packed,
                    by_block: (0..blocks).map(|_| None).collect(),
                })
                .collect(),
            max_rows,
        })
    }

    /// Room for `parts` threads to share the narrow layers' products (allocated here, once).
    pub fn reserve_parts(&mut self, parts: usize) {
        self.narrow_scratch = Aligned::new(parts.max(1) * self.narrow_len);
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
            let narrow = o <= narrow::NARROW_MAX_OUT;
            let forward = Shape { m, k: i, n: o, trans_a: false, trans_b: false, bias: true };
            let products = LayerProducts {
                forward: match &d.packed {
                    Some(p) => Matmul::new_packed(forward, p).map_err(|e| {
                        Error::flag("precision", format!("a {m}x{i}x{o} bf16 product on packed weights: {e}"))
                    })?,
                    None => make(forward)?,
                },
                weights_grad: if narrow {
                    None
                } else {
                    Some(make(Shape { m: i, k: m, n: o, trans_a: true, trans_b: false, bias: false })?)
                },
                input_grad: if d.first || narrow {
                    None
                } else {
                    Some(make(Shape { m, k: o, n: i, trans_a: false, trans_b: true, bias: false })?)
                },
            };
            let need = [Some(&products.forward), products.weights_grad.as_ref(), products.input_grad.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| p.scratch_bytes())
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
            for m in [Some(&p.forward), p.weights_grad.as_ref(), p.input_grad.as_ref()].into_iter().flatten() {
                if !names.iter().any(|n| n == m.implementation()) {
                    names.push(m.implementation().to_string());
                }
            }
            if p.weights_grad.is_none() && !names.iter().any(|n| n == narrow::implementation()) {
                names.push(narrow::implementation().to_string());
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

    /// Writes the bf16 copy of the f32 parameters (n_params,). Call after every change of the
    /// parameters that the update did not write it for (loading, restoring).
    pub fn refresh_weights(&mut self, params: &[f32]) {
        self.layout.write_all(&mut self.weights, params);
    }

    /// Stores bf16(src) for `rows` rows of `width` into `dst`, and zeros up to the padded
    /// row count (zero rows add nothing to x^T dz, and keep NaN out of the padding). Large
    /// conversions are split by rows over `pool`'s threads.
    pub fn convert_rows(pool: &Parallel, src: &[f32], dst: &mut [u16], rows: usize, width: usize) {
        let n = rows * width;
        dst[n..padded(rows) * width].fill(0);
        let dst = Disjoint::new(&mut dst[..n]);
        pool.run_by_rows(rows, width, ROW_BLOCK, &|r| {
            let at = r.start * width..r.end * width;
            // SAFETY: the pieces are disjoint rows.
            bf16::convert(&src[at.clone()], unsafe { dst.piece(at) });
        });
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
        let d = &self.dense[dense];
        debug_assert_eq!(d.kernel, kernel);
        let p = d.by_block[padded(rows) / ROW_BLOCK - 1].as_ref().expect("prepared");
        // The layout has a packed copy of exactly the kernels whose products read one.
        let weights = match self.layout.packed(&kernel) {
            Some(k) => &self.weights[k.at..k.at + k.packing.len],
            None => &self.weights[kernel],
        };
        p.forward.run(&self.inputs[input], weights, Some(bias), out, &mut self.scratch);
    }

    /// grad (in_dim, out_dim) = input^T dz, with dz in `self.delta` (converted by the caller
    /// with [`Bf16Gemms::convert_rows`]).
    pub fn weights_grad(&mut self, dense: usize, input: usize, rows: usize, grad: &mut [f32]) {
        if rows == 0 {
            grad.fill(0.0);
            return;
        }
        self.ensure(dense, rows);
        let d = &self.dense[dense];
        let p = d.by_block[padded(rows) / ROW_BLOCK - 1].as_ref().expect("prepared");
        match &p.weights_grad {
            Some(m) => m.run(&self.inputs[input], &self.delta, None, grad, &mut self.scratch),
            None => narrow::weights_grad(
                &self.inputs[input],
                &self.delta,
                rows,
                d.in_dim,
                d.out_dim,
                &mut self.narrow_scratch,
                grad,
            ),
        }
    }

    /// dx (padded rows, in_dim) = dz W^T. `dx` must hold padded(rows) * in_dim. A narrow
    /// layer's product is split by rows over `pool`'s threads when it is large (each row's
    /// sums are the same either way).
    pub fn input_grad(
        &mut self,
        pool: &Parallel,
        dense: usize,
        kernel: std::ops::Range<usize>,
        rows: usize,
        dx: &mut [f32],
    ) {
        if rows == 0 {
            return;
        }
        self.ensure(dense, rows);
        let d = &self.dense[dense];
        assert!(!d.first, "the first dense layer has no input gradient");
        let p = d.by_block[padded(rows) / ROW_BLOCK - 1].as_ref().expect("prepared");
        match &p.input_grad {
            Some(m) => m.run(&self.delta, &self.weights[kernel], None, dx, &mut self.scratch),
            // All padded rows, as oneDNN writes them (zero dz rows give zero dx rows).
            None => {
                let (rows, i, o, per) = (padded(rows), d.in_dim, d.out_dim, self.narrow_len);
                // A part per thread that the scratch has room for.
                let parts = pool.parts_for(rows * i).min(self.narrow_scratch.len() / per.max(1)).max(1);
                let (dz, w) = (&self.delta[..], &self.weights[kernel]);
                let (dx, scratch) = (Disjoint::new(&mut dx[..rows * i]), Disjoint::new(&mut self.narrow_scratch[..]));
                pool.run_parts(parts, &|part| {
                    let r = part_range(rows, parts, part, ROW_BLOCK);
                    if r.is_empty() {
                        return;
                    }
                    // SAFETY: the parts take disjoint rows of dx and scratch of their own.
                    let (scratch, dx) =
                        unsafe { (scratch.piece(part * per..(part + 1) * per), dx.piece(r.start * i..r.end * i)) };
                    narrow::input_grad(&dz[r.start * o..], w, r.len(), i, o, scratch, dx);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels;

    use crate::engine::activation::tests::ALL;

    /// Values as products and deltas give them, with exact zeros, negative zeros, a NaN and
    /// infinities mixed in: (rows, width).
    fn values(rows: usize, width: usize, seed: usize) -> Vec<f32> {
        (0..rows * width)
            .map(|i| match (i * 7 + seed) % 53 {
                0 => 0.0,
                1 => -0.0,
                2 if i % 3 == 0 => f32::NAN,
                3 if i % 5 == 0 => f32::INFINITY,
                4 if i % 5 == 0 => f32::NEG_INFINITY,
                _ => (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 3.0,
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Forward products on packed weights against the same products on plain ones: equal
    /// within the f32 rounding of the sums (the kernels may add in another order), for
    /// several shapes and for every batch size up to the workspace's, with the packed copy
    /// written whole and by the update's pieces.
    #[test]
    fn packed_weights_give_the_plain_products() {
        if onednn::bf16_unit().is_err() {
            crate::test_skip::skipped("packed_weights_give_the_plain_products", crate::test_skip::NO_BF16_UNIT);
            return;
        }
        let finite = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 0.5).collect()
        };
        let mut packed_any = false;
        for (in_dim, out_dim) in [(40, 48), (784, 1024), (33, 70), (130, 100)] {
            // A bias before the kernel, so that it does not start the buffer.
            let (kernel, n_params) = (5..5 + in_dim * out_dim, 5 + in_dim * out_dim + out_dim);
            let params = finite(n_params, 1);
            let bias = &params[kernel.end..];
            let max_rows = 256;
            let make = |pack: bool| {
                let dense = [(in_dim, out_dim, kernel.clone())];
                let mut g =
                    Bf16Gemms::with_packing(n_params, &dense, &[Some(in_dim)], in_dim.max(out_dim), max_rows, pack)
                        .unwrap();
                g.refresh_weights(&params);
                g
            };
            let (mut plain, mut packed) = (make(false), make(true));
            assert!(plain.layout.packed(&kernel).is_none());
            packed_any |= packed.layout.packed(&kernel).is_some();
            // The copy the update writes piece by piece is the one written whole.
            let mut by_pieces = vec![0u16; packed.layout.len()];
            for start in (0..n_params).step_by(1000) {
                let r = start..(start + 1000).min(n_params);
                // SAFETY: by_pieces holds the layout's length; one piece at a time.
                unsafe { packed.layout.write(by_pieces.as_mut_ptr(), r.clone(), &params[r]) };
            }
            assert!(by_pieces[..] == packed.weights[..], "({in_dim}, {out_dim}): pieces");
            let w = &params[kernel.clone()];
            for rows in [1, 16, 37, 48, 130, 256] {
                let x = finite(rows * in_dim, rows);
                let mut outs = Vec::new();
                for g in [&mut plain, &mut packed] {
                    Bf16Gemms::convert_rows(&Parallel::single(), &x, &mut g.inputs[0], rows, in_dim);
                    let mut out = vec![0.0f32; padded(rows) * out_dim];
                    g.forward(0, 0, kernel.clone(), bias, rows, &mut out);
                    outs.push(out);
                }
                for r in 0..rows {
                    for j in 0..out_dim {
                        let scale: f64 = (0..in_dim)
                            .map(|i| {
                                (bf16::to_f32(bf16::from_f32(x[r * in_dim + i]))
                                    * bf16::to_f32(bf16::from_f32(w[i * out_dim + j])))
                                .abs() as f64
                            })
                            .sum::<f64>()
                            + bias[j].abs() as f64;
                        let err = (outs[0][r * out_dim + j] - outs[1][r * out_dim + j]).abs() as f64;
                        assert!(
                            err <= scale * in_dim as f64 * 2f64.powi(-23),
                            "({in_dim}, {out_dim}) at {rows} rows, [{r}][{j}]: plain {} packed {}",
                            outs[0][r * out_dim + j],
                            outs[1][r * out_dim + j]
                        );
                    }
                }
            }
        }
        if onednn::bf16_unit().is_ok_and(|u| u == Bf16Unit::Amx) {
            assert!(packed_any, "oneDNN packs no weights on AMX: the packed path went untested");
        }
    }

    /// A narrow layer's input gradient split over threads is the one computed on one, bit
    /// for bit, for batches that are split and batches that are not.
    #[test]
    fn narrow_input_grad_split_over_threads_equals_one_thread() {
        if onednn::bf16_unit().is_err() {
            crate::test_skip::skipped(
                "narrow_input_grad_split_over_threads_equals_one_thread",
                crate::test_skip::NO_BF16_UNIT,
            );
            return;
        }
        let (wide, narrow_in, out) = (16, 1000, 10);
        let first = 0..wide * narrow_in;
        let kernel = first.end + narrow_in..first.end + narrow_in + narrow_in * out;
        let n_params = kernel.end + out;
        let params: Vec<f32> = (0..n_params).map(|i| ((i * 7919 % 2003) as f32 / 1001.0 - 1.0) * 0.5).collect();
        let dense = [(wide, narrow_in, first), (narrow_in, out, kernel.clone())];
        let mut g =
            Bf16Gemms::with_packing(n_params, &dense, &[Some(wide), Some(narrow_in)], narrow_in, 256, false).unwrap();
        g.refresh_weights(&params);
        g.reserve_parts(3);
        for rows in [7, 256] {
            let dz: Vec<f32> = (0..rows * out).map(|i| ((i * 104_729 % 997) as f32 / 498.0 - 1.0) * 2.0).collect();
            Bf16Gemms::convert_rows(&Parallel::single(), &dz, &mut g.delta, rows, out);
            let results: Vec<Vec<u32>> = pools()
                .iter()
                .map(|pool| {
                    let mut dx = vec![f32::NAN; padded(rows) * narrow_in];
                    g.input_grad(pool, 1, kernel.clone(), rows, &mut dx);
                    bits(&dx)
                })
                .collect();
            assert!(results.iter().all(|r| r == &results[0]), "{rows} rows: the split product differs");
        }
    }

    /// Widths below, at and above a block (4096 values), and row counts that leave a partial
    /// last block and padding rows; the last four are large enough to be split over threads
    /// (by rows, and by columns of which the last part is short or, at 12, the only one).
    const SHAPES: [(usize, usize); 9] =
        [(37, 1), (37, 10), (19, 1024), (256, 48), (5, 5000), (256, 1024), (45, 1000), (3001, 12), (70, 2050)];

    /// The pools the passes run on: the calling thread alone, and split two and three ways.
    fn pools() -> [Parallel; 3] {
        [Parallel::single(), Parallel::openmp(2), Parallel::openmp(3)]
    }

    /// The fused forward sweep against its separate passes (copy z, activation, bf16 copy,
    /// padding zeros), bit for bit, for every activation, with and without each output, on
    /// one thread and split over several.
    #[test]
    fn activate_rows_equals_the_separate_passes() {
        for (act, pool) in ALL.into_iter().flat_map(|a| pools().map(|p| (a, p))) {
            for (rows, width) in SHAPES {
                let z = values(rows, width, width);
                let mut want = z.clone();
                act.forward(&mut want, width);
                let mut want_bf = vec![0xffffu16; padded(rows) * width];
                Bf16Gemms::convert_rows(&Parallel::single(), &want, &mut want_bf, rows, width);

                let (mut out, mut pre) = (z.clone(), vec![1.0f32; rows * width]);
                let mut bf = vec![0xffffu16; padded(rows) * width];
                let pre_arg = act.needs_input().then_some(&mut pre[..]);
                activate_rows(&pool, act, &mut out, width, pre_arg, Some(&mut bf));
                let what = format!("{} on ({rows}, {width}), {} parts", act.to_text(), pool.parts());
                assert_eq!(bits(&out), bits(&want), "{what}: outputs");
                assert_eq!(bf, want_bf, "{what}: bf16 copy");
                if act.needs_input() {
                    assert_eq!(bits(&pre), bits(&z), "{what}: kept z");
                }
                let mut alone = z.clone();
                activate_rows(&pool, act, &mut alone, width, None, None);
                assert_eq!(bits(&alone), bits(&want), "{what}: without copies");
            }
        }
    }

    /// The fused backward sweep against its separate passes (activation derivative, bf16
    /// copy with padding zeros, column sums into a zeroed bias gradient), bit for bit, for
    /// every activation and for a delta that already is dz, on one thread and split over
    /// several. (The f32 dz left in `dy` is not part of the contract: nothing reads it.)
    #[test]
    fn delta_rows_equals_the_separate_passes() {
        for (act, pool) in ALL.into_iter().map(Some).chain([None]).flat_map(|a| pools().map(|p| (a, p))) {
            for (rows, width) in SHAPES {
                let z = values(rows, width, 3);
                let mut y = z.clone();
                if let Some(a) = act {
                    a.forward(&mut y, width);
                }
                let dy = values(rows, width, 11);
                let zin: &[f32] = if act.is_some_and(|a| a.needs_input()) { &z } else { &[] };

                let mut want = dy.clone();
                if let Some(a) = act {
                    a.backward(zin, &y, &mut want, width);
                }
                let mut want_bf = vec![0xffffu16; padded(rows) * width];
                Bf16Gemms::convert_rows(&Parallel::single(), &want, &mut want_bf, rows, width);
                let mut want_db = vec![0.0f32; width];
                kernels::add_column_sums(&mut want_db, &want);

                let (mut d, mut bf, mut db) = (dy.clone(), vec![0xffffu16; padded(rows) * width], vec![9.0; width]);
                delta_rows(&pool, act, zin, &y, &mut d, width, &mut bf, &mut db);
                let what = format!("{:?} on ({rows}, {width}), {} parts", act.map(|a| a.to_text()), pool.parts());
                assert_eq!(bf, want_bf, "{what}: bf16 dz");
                assert_eq!(bits(&db), bits(&want_db), "{what}: bias gradient");
            }
        }
    }
}
