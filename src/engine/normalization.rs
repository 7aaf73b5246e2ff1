//! Keras `BatchNormalization` and `LayerNormalization` over (rows, width) activations: the
//! forward and backward arithmetic, on plain slices. [`crate::engine::model`] owns the
//! buffers and calls these per layer.
//!
//! Batch normalization in training normalizes with the mean and the biased variance of the
//! whole GLOBAL batch (Keras/Horovod `SyncBatchNormalization`): each rank adds up its rows,
//! and a [`BatchSum`] the trainer passes in sums those few numbers over the ranks (one
//! allreduce of 2 width + 1 f64 values in the forward pass, one of 2 width in the backward
//! pass). With one rank the sum is the identity ([`LocalSum`]), so the engine knows nothing
//! of MPI.
//!
//! The forward sums are one pass of f64 sums of (x - K) and (x - K)^2, shifted by the moving
//! mean K (the same on every rank). A second, centred pass would cost a second latency-bound
//! allreduce per layer and step; the one-pass form in f64 loses relative precision only as
//! eps_f64 (2^-52) times (mean - K)^2 / variance, below f32's own 2^-24 while |mean - K| <
//! 2^14 standard deviations, and the shift keeps mean - K small once K has warmed up.

/// Sums a few f64 values over the ranks of a data-parallel run: `recv` = element-wise sum
/// of every rank's `send` (the same length on every rank). Called in the same order on
/// every rank, once per batch-normalization layer in each forward and backward pass.
pub trait BatchSum {
    /// `recv` = the element-wise sum over the ranks of `send`; both the same length.
    fn sum_batch(&self, send: &[f64], recv: &mut [f64]);
}

/// One rank: the sum is the values themselves.
pub struct LocalSum;

impl BatchSum for LocalSum {
    fn sum_batch(&self, send: &[f64], recv: &mut [f64]) {
        recv.copy_from_slice(send);
    }
}

/// What one batch-normalization layer keeps from its forward pass for the backward pass
/// and the moving-statistics update. All (width,).
pub struct BatchStats<'a> {
    /// The batch's mean (training) or the moving mean (evaluation).
    pub mean: &'a mut [f32],
    /// The batch's biased variance (training) or the moving variance (evaluation).
    pub var: &'a mut [f32],
    /// 1 / sqrt(var + epsilon).
    pub inv_std: &'a mut [f32],
}

/// Batch normalization in training: y = gamma (x - mean) / sqrt(var + epsilon) + beta with
/// the mean and biased variance of the global batch; writes the normalized input x_hat for
/// the backward pass. x, y, x_hat: (rows, width); gamma, beta, shift (the moving mean, used
/// only to centre the sums): (width,); `sums`: scratch of at least 2 (2 width + 1) f64.
/// Returns the number of rows in the global batch.
#[allow(clippy::too_many_arguments)]
pub fn batch_forward_train(
    x: &[f32],
    y: &mut [f32],
    x_hat: &mut [f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    shift: &[f32],
    epsilon: f32,
    stats: BatchStats,
    sums: &mut [f64],
    sync: &dyn BatchSum,
) -> f64 {
    let n = 2 * width + 1;
    let (send, rest) = sums.split_at_mut(n);
    let recv = &mut rest[..n];
    send.fill(0.0);
    let rows = x.len() / width;
    send[0] = rows as f64;
    {
        let (s1, s2) = send[1..].split_at_mut(width);
        for row in x.chunks_exact(width) {
            for j in 0..width {
                let t = (row[j] - shift[j]) as f64;
                s1[j] += t;
                s2[j] += t * t;
            }
        }
    }
    sync.sum_batch(send, recv);
    let count = recv[0];
    for j in 0..width {
        let m = recv[1 + j] / count;
        let var = (recv[1 + width + j] / count - m * m).max(0.0);
        stats.mean[j] = (shift[j] as f64 + m) as f32;
        stats.var[j] = var as f32;
        stats.inv_std[j] = (1.0 / (var + epsilon as f64).sqrt()) as f32;
    }
    for ((xr, yr), hr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)).zip(x_hat.chunks_exact_mut(width)) {
        for j in 0..width {
            let h = (xr[j] - stats.mean[j]) * stats.inv_std[j];
            hr[j] = h;
            yr[j] = gamma[j] * h + beta[j];
        }
    }
    count
}

/// Batch normalization in evaluation: the same affine map with the moving statistics.
/// x, y, x_hat: (rows, width); the rest (width,). Fills `stats` for a backward pass.
#[allow(clippy::too_many_arguments)]
pub fn batch_forward_eval(
    x: &[f32],
    y: &mut [f32],
    x_hat: &mut [f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    moving_mean: &[f32],
    moving_var: &[f32],
    epsilon: f32,
    stats: BatchStats,
) {
    for j in 0..width {
        stats.mean[j] = moving_mean[j];
        stats.var[j] = moving_var[j];
        stats.inv_std[j] = 1.0 / (moving_var[j] + epsilon).sqrt();
    }
    for ((xr, yr), hr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)).zip(x_hat.chunks_exact_mut(width)) {
        for j in 0..width {
            let h = (xr[j] - stats.mean[j]) * stats.inv_std[j];
            hr[j] = h;
            yr[j] = gamma[j] * h + beta[j];
        }
    }
}

/// Keras's moving-statistics update after a training forward pass: moving = moving *
/// momentum + batch * (1 - momentum), for the mean and the (biased) variance. All (width,).
pub fn update_moving(moving_mean: &mut [f32], moving_var: &mut [f32], mean: &[f32], var: &[f32], momentum: f32) {
    for (m, &b) in moving_mean.iter_mut().zip(mean) {
        *m = *m * momentum + b * (1.0 - momentum);
    }
    for (v, &b) in moving_var.iter_mut().zip(var) {
        *v = *v * momentum + b * (1.0 - momentum);
    }
}

/// Batch normalization's backward pass. On entry `delta` holds dL/dy (rows, width); writes
/// this rank's dL/dgamma and dL/dbeta (sums over its rows; the gradient sum adds the ranks)
/// and, when `input_grad`, replaces `delta` by dL/dx. In training (`count` = rows of the
/// global batch, `Some`), the statistics depend on every row of the global batch:
/// dx = gamma inv_std (dy - sum(dy) / N - x_hat sum(dy x_hat) / N) with both sums over the
/// global batch (one [`BatchSum`] of 2 width values); in evaluation dx = gamma inv_std dy.
/// `sums`: scratch of at least 4 width f64.
#[allow(clippy::too_many_arguments)]
pub fn batch_backward(
    delta: &mut [f32],
    x_hat: &[f32],
    width: usize,
    gamma: &[f32],
    inv_std: &[f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
    count: Option<f64>,
    input_grad: bool,
    sums: &mut [f64],
    sync: &dyn BatchSum,
) {
    let (send, rest) = sums.split_at_mut(2 * width);
    let recv = &mut rest[..2 * width];
    send.fill(0.0);
    {
        let (s_dy, s_dyh) = send.split_at_mut(width);
        for (dr, hr) in delta.chunks_exact(width).zip(x_hat.chunks_exact(width)) {
            for j in 0..width {
                s_dy[j] += dr[j] as f64;
                s_dyh[j] += (dr[j] * hr[j]) as f64;
            }
        }
    }
    for j in 0..width {
        d_beta[j] = send[j] as f32;
        d_gamma[j] = send[width + j] as f32;
    }
    if !input_grad {
        return;
    }
    match count {
        Some(n) => {
            sync.sum_batch(send, recv);
            let (g_dy, g_dyh) = recv.split_at(width);
            for (dr, hr) in delta.chunks_exact_mut(width).zip(x_hat.chunks_exact(width)) {
                for j in 0..width {
                    let mean_dy = (g_dy[j] / n) as f32;
                    let mean_dyh = (g_dyh[j] / n) as f32;
                    dr[j] = gamma[j] * inv_std[j] * (dr[j] - mean_dy - hr[j] * mean_dyh);
                }
            }
        }
        None => {
            for dr in delta.chunks_exact_mut(width) {
                for j in 0..width {
                    dr[j] *= gamma[j] * inv_std[j];
                }
            }
        }
    }
}

/// Layer normalization (Keras `LayerNormalization` over the feature axis): each row is
/// normalized by its own mean and biased variance, y = gamma x_hat + beta. x, y, x_hat:
/// (rows, width); inv_std: (rows,) 1 / sqrt(var + epsilon) of each row.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(
    x: &[f32],
    y: &mut [f32],
    x_hat: &mut [f32],
    inv_std: &mut [f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
) {
    let rows = x.chunks_exact(width).zip(y.chunks_exact_mut(width)).zip(x_hat.chunks_exact_mut(width));
    for (((xr, yr), hr), inv) in rows.zip(inv_std.iter_mut()) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
        let i = 1.0 / (var + epsilon as f64).sqrt();
        *inv = i as f32;
        for j in 0..width {
            let h = ((xr[j] as f64 - mean) * i) as f32;
            hr[j] = h;
            yr[j] = gamma[j] * h + beta[j];
        }
    }
}

/// Layer normalization's backward pass: writes dL/dgamma and dL/dbeta (sums over the rows)
/// and, when `input_grad`, replaces `delta` (dL/dy, (rows, width)) by dL/dx, row by row:
/// with g = gamma dy, dx = inv_std (g - mean(g) - x_hat mean(g x_hat)).
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    delta: &mut [f32],
    x_hat: &[f32],
    inv_std: &[f32],
    width: usize,
    gamma: &[f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
    input_grad: bool,
) {
    d_gamma.fill(0.0);
    d_beta.fill(0.0);
    for ((dr, hr), &inv) in delta.chunks_exact_mut(width).zip(x_hat.chunks_exact(width)).zip(inv_std) {
        let (mut mean_g, mut mean_gh) = (0.0f64, 0.0f64);
        for j in 0..width {
            d_beta[j] += dr[j];
            d_gamma[j] += dr[j] * hr[j];
            let g = (gamma[j] * dr[j]) as f64;
            mean_g += g;
            mean_gh += g * hr[j] as f64;
        }
        if input_grad {
            let (mean_g, mean_gh) = ((mean_g / width as f64) as f32, (mean_gh / width as f64) as f32);
            for j in 0..width {
                dr[j] = inv * (gamma[j] * dr[j] - mean_g - hr[j] * mean_gh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values re-derived by hand. Batch x = [[1, 10], [3, 30]] (two rows, width 2): column
    /// means 2 and 20, biased variances 1 and 100; with epsilon 0 the normalized values are
    /// [[-1, -1], [1, 1]], and gamma [2, 3], beta [0.5, -1] give [[-1.5, -4], [2.5, 2]].
    /// The moving statistics after one step with momentum 0.9 from (0, 1): mean 0.2, 2.0;
    /// variance 0.9 + 0.1 = 1.0, 0.9 + 10 = 10.9. A second rank holding the same two rows
    /// (simulated by a sum that doubles every value) leaves the statistics unchanged.
    #[test]
    fn batch_forward_matches_hand_values() {
        struct Twice;
        impl BatchSum for Twice {
            fn sum_batch(&self, send: &[f64], recv: &mut [f64]) {
                recv.iter_mut().zip(send).for_each(|(r, s)| *r = 2.0 * s);
            }
        }
        let x = [1.0, 10.0, 3.0, 30.0];
        for (sync, want_count) in [(&LocalSum as &dyn BatchSum, 2.0), (&Twice, 4.0)] {
            let (mut y, mut h) = ([0.0; 4], [0.0; 4]);
            let (mut mean, mut var, mut inv) = ([0.0; 2], [0.0; 2], [0.0; 2]);
            let mut sums = [0.0; 10];
            let stats = BatchStats { mean: &mut mean, var: &mut var, inv_std: &mut inv };
            let shift = [0.5, -3.0];
            let count = batch_forward_train(
                &x,
                &mut y,
                &mut h,
                2,
                &[2.0, 3.0],
                &[0.5, -1.0],
                &shift,
                0.0,
                stats,
                &mut sums,
                sync,
            );
            assert_eq!(count, want_count);
            assert_eq!((mean, var), ([2.0, 20.0], [1.0, 100.0]));
            assert_eq!(y, [-1.5, -4.0, 2.5, 2.0]);
            let (mut mm, mut mv) = ([0.0f32; 2], [1.0f32; 2]);
            update_moving(&mut mm, &mut mv, &mean, &var, 0.9);
            for (a, b) in mm.iter().chain(&mv).zip([0.2, 2.0, 1.0, 10.9]) {
                assert!((a - b).abs() < 1e-5, "{mm:?} {mv:?}");
            }
        }
        // Evaluation with moving mean 1, variance 4 - 1e-3 and Keras's epsilon 1e-3:
        // (x - 1) / 2 * gamma + beta.
        let (mut y, mut h) = ([0.0; 4], [0.0; 4]);
        let (mut mean, mut var, mut inv) = ([0.0; 2], [0.0; 2], [0.0; 2]);
        let stats = BatchStats { mean: &mut mean, var: &mut var, inv_std: &mut inv };
        let v = 4.0 - 1e-3;
        batch_forward_eval(&x, &mut y, &mut h, 2, &[2.0, 1.0], &[0.0, 1.0], &[1.0, 1.0], &[v, v], 1e-3, stats);
        for (a, b) in y.iter().zip([0.0, 5.5, 2.0, 15.5]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }

    /// Row [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5; with Keras's
    /// epsilon 1e-3, x_hat = (x - 3) / sqrt(3.501).
    #[test]
    fn layer_forward_matches_hand_values() {
        let x = [1.0, 2.0, 3.0, 6.0];
        let (mut y, mut h, mut inv) = ([0.0; 4], [0.0; 4], [0.0; 1]);
        layer_forward(&x, &mut y, &mut h, &mut inv, 4, &[1.0, 2.0, 1.0, 1.0], &[0.0, 0.0, 0.0, 1.0], 1e-3);
        let s = 3.501f64.sqrt();
        for (a, b) in y.iter().zip([-2.0 / s, -2.0 / s, 0.0, 3.0 / s + 1.0]) {
            assert!((*a as f64 - b).abs() < 1e-6, "{y:?}");
        }
    }
}
