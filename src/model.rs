//! Sequential model: layer specs -> parameter layout, forward and backward passes.
//!
//! The model never owns weights. All parameters live in one flat `params: Vec<f32>` and all
//! gradients in one flat `grads: Vec<f32>` of the same layout; a dense layer knows the
//! [`Span`]s of its kernel and bias in those buffers. Kernels are stored in Keras orientation,
//! (in_dim, out_dim) row-major, so y = x W + b with x: (rows, in_dim).

use crate::activation::Activation;
use crate::gemm::{gemm, Mat};
use crate::rng;
use crate::{Error, Result};
use rand::Rng;

/// A contiguous range in the flat parameter (and gradient) buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// One entry of `--layers`, before the input width is known.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LayerSpec {
    Dense { units: usize, activation: Activation },
    Dropout { rate: f32 },
}

impl LayerSpec {
    /// Parses `64:relu,64:relu,dropout:0.2,10:softmax`. A bare width (`32`) is linear, as in
    /// Keras `Dense(32)`.
    pub fn parse_list(text: &str) -> Result<Vec<LayerSpec>> {
        let bad = |entry: &str, why: &str| {
            Error::flag("layers", format!("'{entry}' in '{text}': {why} (expected UNITS:ACTIVATION or dropout:RATE, e.g. 64:relu,10:softmax)"))
        };
        let mut specs = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(bad(entry, "empty layer"));
            }
            let (head, tail) = match entry.split_once(':') {
                Some((h, t)) => (h.trim(), Some(t.trim())),
                None => (entry, None),
            };
            if head == "dropout" {
                let rate: f32 = tail
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| bad(entry, "dropout needs a rate"))?;
                if !(0.0..1.0).contains(&rate) {
                    return Err(bad(entry, "dropout rate must be in [0, 1)"));
                }
                specs.push(LayerSpec::Dropout { rate });
                continue;
            }
            let units: usize =
                head.parse().map_err(|_| bad(entry, &format!("'{head}' is not a layer width")))?;
            if units == 0 {
                return Err(bad(entry, "a layer needs at least one unit"));
            }
            let activation = match tail {
                Some(name) => Activation::parse(name)?,
                None => Activation::Linear,
            };
            specs.push(LayerSpec::Dense { units, activation });
        }
        match specs.last() {
            Some(LayerSpec::Dense { .. }) => Ok(specs),
            _ => Err(bad(text, "the last layer must be a dense layer")),
        }
    }

    pub fn to_text(specs: &[LayerSpec]) -> String {
        let parts: Vec<String> = specs
            .iter()
            .map(|s| match s {
                LayerSpec::Dense { units, activation } => format!("{units}:{}", activation.name()),
                LayerSpec::Dropout { rate } => format!("dropout:{rate}"),
            })
            .collect();
        parts.join(",")
    }
}

#[derive(Clone, Debug)]
pub enum LayerKind {
    Dense { activation: Activation, kernel: Span, bias: Span },
    Dropout { rate: f32 },
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub kind: LayerKind,
    pub in_dim: usize,
    pub out_dim: usize,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub layers: Vec<Layer>,
    pub in_dim: usize,
    /// Length of the flat parameter buffer.
    pub n_params: usize,
}

/// Keys that make dropout masks reproducible: a mask element depends only on the seed, the
/// epoch, the sample's global row index, the layer and the unit, never on which rank holds
/// the sample.
pub struct DropoutKeys<'a> {
    pub seed: u64,
    pub epoch: u64,
    /// Global row index of each batch row: (rows,).
    pub rows: &'a [u64],
}

/// Per-layer buffers for up to `max_rows` samples, allocated once.
pub struct Workspace {
    pub max_rows: usize,
    /// Output of each layer (post-activation): (max_rows, out_dim).
    acts: Vec<Vec<f32>>,
    /// Dropout masks (0 or 1/(1-rate)), empty for dense layers: (max_rows, out_dim).
    masks: Vec<Vec<f32>>,
    /// Two ping-pong buffers for the backward pass: (max_rows, widest layer).
    delta: Vec<f32>,
    delta_next: Vec<f32>,
    /// Whether the last forward pass applied dropout masks (training) or not (evaluation).
    masks_active: bool,
}

impl Model {
    pub fn new(in_dim: usize, specs: &[LayerSpec]) -> Model {
        let mut layers = Vec::with_capacity(specs.len());
        let mut offset = 0;
        let mut width = in_dim;
        for spec in specs {
            let layer = match *spec {
                LayerSpec::Dense { units, activation } => {
                    let kernel = Span { start: offset, len: width * units };
                    let bias = Span { start: kernel.start + kernel.len, len: units };
                    offset = bias.start + bias.len;
                    Layer { kind: LayerKind::Dense { activation, kernel, bias }, in_dim: width, out_dim: units }
                }
                LayerSpec::Dropout { rate } => {
                    Layer { kind: LayerKind::Dropout { rate }, in_dim: width, out_dim: width }
                }
            };
            width = layer.out_dim;
            layers.push(layer);
        }
        Model { layers, in_dim, n_params: offset }
    }

    pub fn out_dim(&self) -> usize {
        self.layers.last().map_or(self.in_dim, |l| l.out_dim)
    }

    /// Activation of the last layer (the model always ends with a dense layer).
    pub fn output_activation(&self) -> Activation {
        match self.layers.last().map(|l| &l.kind) {
            Some(LayerKind::Dense { activation, .. }) => *activation,
            _ => Activation::Linear,
        }
    }

    /// The dense layers in order, as (index into `layers`, kernel span, bias span).
    pub fn dense_layers(&self) -> impl Iterator<Item = (usize, &Layer, Span, Span)> + '_ {
        self.layers.iter().enumerate().filter_map(|(i, l)| match l.kind {
            LayerKind::Dense { kernel, bias, .. } => Some((i, l, kernel, bias)),
            LayerKind::Dropout { .. } => None,
        })
    }

    /// "64 -> 128 relu -> dropout 0.2 -> 10 softmax"
    pub fn describe(&self) -> String {
        let mut s = self.in_dim.to_string();
        for l in &self.layers {
            match l.kind {
                LayerKind::Dense { activation, .. } => {
                    s += &format!(" -> {} {}", l.out_dim, activation.name())
                }
                LayerKind::Dropout { rate } => s += &format!(" -> dropout {rate}"),
            }
        }
        s
    }

    /// Keras defaults: Glorot-uniform kernels, U(-sqrt(6/(in+out)), +sqrt(6/(in+out))), and
    /// zero biases. Depends only on the seed, so every rank draws the same parameters.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0; self.n_params];
        let mut rng = rng::stream(seed, &[rng::INIT]);
        for (_, layer, kernel, _) in self.dense_layers() {
            let limit = (6.0 / (layer.in_dim + layer.out_dim) as f64).sqrt() as f32;
            for w in &mut params[kernel.range()] {
                *w = rng.random_range(-limit..limit);
            }
        }
        params
    }

    pub fn workspace(&self, max_rows: usize) -> Workspace {
        let widest = self.layers.iter().map(|l| l.in_dim.max(l.out_dim)).max().unwrap_or(0);
        Workspace {
            max_rows,
            acts: self.layers.iter().map(|l| vec![0.0; max_rows * l.out_dim]).collect(),
            masks: self
                .layers
                .iter()
                .map(|l| match l.kind {
                    LayerKind::Dropout { .. } => vec![0.0; max_rows * l.out_dim],
                    LayerKind::Dense { .. } => Vec::new(),
                })
                .collect(),
            delta: vec![0.0; max_rows * widest],
            delta_next: vec![0.0; max_rows * widest],
            masks_active: false,
        }
    }

    /// Forward pass over `rows` samples. x: (rows, in_dim). Dropout is applied only when
    /// `dropout` keys are given (training); otherwise it is the identity.
    /// Returns the output: (rows, out_dim).
    pub fn forward<'w>(
        &self,
        params: &[f32],
        x: &[f32],
        rows: usize,
        ws: &'w mut Workspace,
        dropout: Option<&DropoutKeys>,
    ) -> &'w [f32] {
        assert!(rows <= ws.max_rows, "batch of {rows} rows exceeds workspace of {}", ws.max_rows);
        ws.masks_active = dropout.is_some();
        for (l, layer) in self.layers.iter().enumerate() {
            let (before, rest) = ws.acts.split_at_mut(l);
            let input: &[f32] = if l == 0 { x } else { &before[l - 1] };
            let input = &input[..rows * layer.in_dim];
            let out = &mut rest[0][..rows * layer.out_dim];
            match layer.kind {
                LayerKind::Dense { activation, kernel, bias } => {
                    // Fused bias: start every row at b, then accumulate x W with beta = 1.
                    let b = &params[bias.range()];
                    out.chunks_exact_mut(layer.out_dim).for_each(|row| row.copy_from_slice(b));
                    gemm(
                        1.0,
                        &Mat::new(input, rows, layer.in_dim),
                        false,
                        &Mat::new(&params[kernel.range()], layer.in_dim, layer.out_dim),
                        false,
                        1.0,
                        out,
                    );
                    activation.forward(out, layer.out_dim);
                }
                LayerKind::Dropout { rate } => match dropout {
                    Some(keys) if rate > 0.0 => {
                        let mask = &mut ws.masks[l][..rows * layer.out_dim];
                        fill_dropout_mask(mask, layer.out_dim, rate, l as u64, keys);
                        for ((o, &i), &m) in out.iter_mut().zip(input).zip(mask.iter()) {
                            *o = i * m;
                        }
                    }
                    _ => out.copy_from_slice(input),
                },
            }
        }
        let last = self.layers.len() - 1;
        &ws.acts[last][..rows * self.out_dim()]
    }

    /// The output of the last forward pass and the buffer for the loss gradient, both
    /// (rows, out_dim).
    pub fn output_and_delta<'w>(&self, ws: &'w mut Workspace, rows: usize) -> (&'w [f32], &'w mut [f32]) {
        let n = rows * self.out_dim();
        let last = self.layers.len() - 1;
        (&ws.acts[last][..n], &mut ws.delta[..n])
    }

    /// Backward pass after [`Model::forward`] on the same `x` and `rows`.
    ///
    /// On entry the delta buffer (see [`Model::output_and_delta`]) holds dL/dy of the model
    /// output, or dL/dz of the last layer's pre-activation when `delta_is_logit_grad` (a loss
    /// fused with its output activation). Writes every parameter's gradient into `grads`
    /// (overwriting, not accumulating).
    pub fn backward(
        &self,
        params: &[f32],
        grads: &mut [f32],
        x: &[f32],
        rows: usize,
        ws: &mut Workspace,
        delta_is_logit_grad: bool,
    ) {
        let first_dense = self.dense_layers().next().map_or(usize::MAX, |(i, ..)| i);
        let mut is_logit_grad = delta_is_logit_grad;
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let delta = &mut ws.delta[..rows * layer.out_dim];
            match layer.kind {
                LayerKind::Dense { activation, kernel, bias } => {
                    if !is_logit_grad {
                        activation.backward(&ws.acts[l][..rows * layer.out_dim], delta, layer.out_dim);
                    }
                    is_logit_grad = false;
                    let input: &[f32] = if l == 0 { x } else { &ws.acts[l - 1] };
                    let input = Mat::new(input, rows, layer.in_dim);
                    let dz = Mat::new(delta, rows, layer.out_dim);
                    // dW = x^T dz: (in_dim, out_dim)
                    gemm(1.0, &input, true, &dz, false, 0.0, &mut grads[kernel.range()]);
                    // db = column sums of dz: (out_dim,)
                    let db = &mut grads[bias.range()];
                    db.fill(0.0);
                    for row in dz.data.chunks_exact(layer.out_dim) {
                        db.iter_mut().zip(row).for_each(|(g, &d)| *g += d);
                    }
                    if l > first_dense {
                        // dx = dz W^T: (rows, in_dim), the next delta down.
                        let w = Mat::new(&params[kernel.range()], layer.in_dim, layer.out_dim);
                        gemm(1.0, &dz, false, &w, true, 0.0, &mut ws.delta_next[..rows * layer.in_dim]);
                        std::mem::swap(&mut ws.delta, &mut ws.delta_next);
                    }
                }
                LayerKind::Dropout { rate } => {
                    if l > first_dense && ws.masks_active && rate > 0.0 {
                        let mask = &ws.masks[l][..rows * layer.out_dim];
                        delta.iter_mut().zip(mask).for_each(|(d, &m)| *d *= m);
                    }
                }
            }
        }
    }
}

/// Inverted dropout: keep a unit with probability 1 - rate and scale it by 1/(1 - rate), so
/// evaluation needs no rescaling (as Keras does). mask: (rows, width).
fn fill_dropout_mask(mask: &mut [f32], width: usize, rate: f32, layer: u64, keys: &DropoutKeys) {
    let keep = 1.0 / (1.0 - rate);
    for (row_mask, &row) in mask.chunks_exact_mut(width).zip(keys.rows) {
        let h_row = rng::hash(keys.seed, &[rng::DROPOUT, keys.epoch, row, layer]);
        for (unit, m) in row_mask.iter_mut().enumerate() {
            let u = rng::unit_f32(rng::mix(h_row ^ unit as u64));
            *m = if u < rate { 0.0 } else { keep };
        }
    }
}
