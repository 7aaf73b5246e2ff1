//! Element-wise kernels, compiled for the CPU's widest vector unit and chosen at run time.
//!
//! Rust targets baseline x86-64 (SSE2, 4 floats per instruction) unless told otherwise, and
//! a binary built with `-C target-cpu=native` dies with an illegal instruction on an older
//! node of a mixed cluster. So each kernel is compiled three times (AVX-512, AVX2, baseline)
//! and the best one the CPU supports is picked on each call (a cached feature check). Every
//! variant performs the same IEEE operations in the same order per element (Rust never
//! contracts a * b + c into an FMA), so the results are bit-identical on any CPU.

macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                // Compiled for avx2 AND fma, so both must be there (some CPUs and VMs
                // expose AVX2 without FMA).
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
/// The same dispatch for element-wise kernels in sibling modules (bf16 conversion).
pub(crate) use multiversion;

multiversion! {
    /// y = max(z, 0) in place.
    pub fn relu(z: &mut [f32]) {
        for v in z.iter_mut() {
            *v = if *v > 0.0 { *v } else { 0.0 };
        }
    }
}

multiversion! {
    /// dy *= (y > 0): relu's derivative from its output. Both: same length.
    pub fn relu_backward(y: &[f32], dy: &mut [f32]) {
        for (d, &y) in dy.iter_mut().zip(y) {
            *d = if y > 0.0 { *d } else { 0.0 };
        }
    }
}

multiversion! {
    /// dy *= 1 - y^2: tanh's derivative from its output.
    pub fn tanh_backward(y: &[f32], dy: &mut [f32]) {
        for (d, &y) in dy.iter_mut().zip(y) {
            *d *= 1.0 - y * y;
        }
    }
}

multiversion! {
    /// dy *= y (1 - y): the sigmoid's derivative from its output.
    pub fn sigmoid_backward(y: &[f32], dy: &mut [f32]) {
        for (d, &y) in dy.iter_mut().zip(y) {
            *d *= y * (1.0 - y);
        }
    }
}

/// 1/sqrt(2)
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/sqrt(2 pi): the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The complementary error function erfc(x) = 1 - erf(x), with fractional error below 1.2e-7
/// everywhere (the Chebyshev fit of Numerical Recipes, 2nd ed., section 6.2). Computing
/// GELU as 0.5 z erfc(-z / sqrt 2) keeps full relative precision far into the negative tail,
/// where 1 + erf(...) would cancel.
#[inline(always)]
pub fn erfc(x: f32) -> f32 {
    // In f64: in f32 the exponent's rounding (about 5 near x = 2) alone costs 3e-7.
    let z = (x as f64).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    (if x >= 0.0 { r } else { 2.0 - r }) as f32
}

multiversion! {
    /// Exact GELU in place: y = 0.5 z erfc(-z / sqrt 2) = z Phi(z) (Keras `approximate=False`).
    pub fn gelu(z: &mut [f32]) {
        for v in z.iter_mut() {
            *v = 0.5 * *v * erfc(-*v * FRAC_1_SQRT_2);
        }
    }
}

multiversion! {
    /// dy *= Phi(z) + z phi(z): GELU's derivative from its INPUT z. Both: same length.
    pub fn gelu_backward(z: &[f32], dy: &mut [f32]) {
        for (d, &z) in dy.iter_mut().zip(z) {
            let cdf = 0.5 * erfc(-z * FRAC_1_SQRT_2);
            let pdf = FRAC_1_SQRT_2PI * (-0.5 * z * z).exp();
            *d *= cdf + z * pdf;
        }
    }
}

multiversion! {
    /// y = z for z >= 0, slope z below, in place.
    pub fn leaky_relu(z: &mut [f32], slope: f32) {
        for v in z.iter_mut() {
            *v = if *v >= 0.0 { *v } else { slope * *v };
        }
    }
}

multiversion! {
    /// dy *= 1 where y > 0, slope elsewhere: leaky relu's derivative from its output (slope >= 0
    /// keeps the sign of z in y).
    pub fn leaky_relu_backward(y: &[f32], dy: &mut [f32], slope: f32) {
        for (d, &y) in dy.iter_mut().zip(y) {
            *d = if y > 0.0 { *d } else { *d * slope };
        }
    }
}

multiversion! {
    /// y = scale z for z >= 0, scale alpha (e^z - 1) below, in place (elu: alpha = scale = 1;
    /// selu: Keras's constants).
    pub fn elu(z: &mut [f32], alpha: f32, scale: f32) {
        for v in z.iter_mut() {
            *v = scale * if *v >= 0.0 { *v } else { alpha * v.exp_m1() };
        }
    }
}

multiversion! {
    /// dy *= scale where y > 0, y + scale alpha elsewhere (= scale alpha e^z): the (s)elu
    /// derivative from its output.
    pub fn elu_backward(y: &[f32], dy: &mut [f32], alpha: f32, scale: f32) {
        let sa = scale * alpha;
        for (d, &y) in dy.iter_mut().zip(y) {
            *d *= if y > 0.0 { scale } else { y + sa };
        }
    }
}

multiversion! {
    /// y = ln(1 + e^z) in place, as max(z, 0) + ln(1 + e^-|z|) so that it never overflows.
    pub fn softplus(z: &mut [f32]) {
        for v in z.iter_mut() {
            *v = v.max(0.0) + (-v.abs()).exp().ln_1p();
        }
    }
}

multiversion! {
    /// dy *= sigmoid(z) = 1 - e^-y: softplus's derivative from its output.
    pub fn softplus_backward(y: &[f32], dy: &mut [f32]) {
        for (d, &y) in dy.iter_mut().zip(y) {
            *d *= -(-y).exp_m1();
        }
    }
}

multiversion! {
    /// y = z sigmoid(z) in place (swish, silu).
    pub fn swish(z: &mut [f32]) {
        for v in z.iter_mut() {
            *v /= 1.0 + (-*v).exp();
        }
    }
}

multiversion! {
    /// dy *= s (1 + z (1 - s)) with s = sigmoid(z): swish's derivative from its INPUT z.
    pub fn swish_backward(z: &[f32], dy: &mut [f32]) {
        for (d, &z) in dy.iter_mut().zip(z) {
            let s = 1.0 / (1.0 + (-z).exp());
            *d *= s * (1.0 + z * (1.0 - s));
        }
    }
}

multiversion! {
    /// g += a1 sign(w) + a2 w: the gradient of a kernel penalty (sign(0) = 0, as the
    /// subgradient TensorFlow and JAX take for |w| at 0). g, w: same length.
    pub fn add_penalty_gradient(g: &mut [f32], w: &[f32], a1: f32, a2: f32) {
        for (g, &w) in g.iter_mut().zip(w) {
            let sign = if w > 0.0 { 1.0 } else if w < 0.0 { -1.0 } else { 0.0 };
            *g += a1 * sign + a2 * w;
        }
    }
}

multiversion! {
    /// a *= b, element by element (dropout masks).
    pub fn mul_in_place(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a *= b;
        }
    }
}

multiversion! {
    /// out = a + b, element by element (one pass instead of a copy and an add).
    pub fn add_into(out: &mut [f32], a: &[f32], b: &[f32]) {
        let n = out.len();
        let (a, b) = (&a[..n], &b[..n]);
        for i in 0..n {
            out[i] = a[i] + b[i];
        }
    }
}

multiversion! {
    /// a += b, element by element.
    pub fn add_in_place(a: &mut [f32], b: &[f32]) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a += b;
        }
    }
}

multiversion! {
    /// acc += the sum of the rows of m. acc: (cols,); m: (rows, cols) row-major.
    pub fn add_column_sums(acc: &mut [f32], m: &[f32]) {
        let cols = acc.len();
        for row in m.chunks_exact(cols) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

/// Adam's per-step constants (Keras 3's formulation).
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    /// Multiplies the summed gradient into the mean gradient (and any clipping).
    pub scale: f32,
    /// lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    pub alpha: f32,
    /// 1 - beta1
    pub one_minus_b1: f32,
    /// 1 - beta2
    pub one_minus_b2: f32,
    /// Added to sqrt(v) in the denominator.
    pub eps: f32,
    /// 1 - lr * weight_decay (decoupled weight decay; 1 when off)
    pub decay: f32,
}

multiversion! {
    /// One fused Adam update over four parallel buffers of equal length. Returns whether every
    /// gradient was finite (checked as each is read, so no pass of its own is needed).
    pub fn adam(params: &mut [f32], grad_sum: &[f32], m: &mut [f32], v: &mut [f32], k: AdamStep) -> bool {
        let n = params.len();
        let (grad_sum, m, v) = (&grad_sum[..n], &mut m[..n], &mut v[..n]);
        let mut nonfinite = 0u32;
        for i in 0..n {
            nonfinite |= is_nonfinite(grad_sum[i]);
            let g = grad_sum[i] * k.scale;
            let mi = m[i] + (g - m[i]) * k.one_minus_b1;
            let vi = v[i] + (g * g - v[i]) * k.one_minus_b2;
            m[i] = mi;
            v[i] = vi;
            params[i] = params[i] * k.decay - k.alpha * mi / (vi.sqrt() + k.eps);
        }
        nonfinite == 0
    }
}

/// SGD's per-step constants (Keras 3's formulation).
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    /// Multiplies the summed gradient into the mean gradient (1 / global batch).
    pub scale: f32,
    /// This step's learning rate.
    pub lr: f32,
    /// Momentum (0 = plain SGD).
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// 1 - lr * weight_decay (decoupled weight decay; 1 when off)
    pub decay: f32,
}

multiversion! {
    /// One fused SGD update: m = momentum m - lr g; p += m (Nesterov: p += momentum m - lr g).
    /// Returns whether every gradient was finite.
    pub fn sgd(params: &mut [f32], grad_sum: &[f32], m: &mut [f32], k: SgdStep) -> bool {
        let n = params.len();
        let (grad_sum, m) = (&grad_sum[..n], &mut m[..n]);
        let mut nonfinite = 0u32;
        for i in 0..n {
            nonfinite |= is_nonfinite(grad_sum[i]);
            let g = grad_sum[i] * k.scale;
            let mi = k.momentum * m[i] - k.lr * g;
            m[i] = mi;
            let update = if k.nesterov { k.momentum * mi - k.lr * g } else { mi };
            params[i] = params[i] * k.decay + update;
        }
        nonfinite == 0
    }
}

/// RMSprop's per-step constants (Keras 3's formulation).
#[derive(Clone, Copy, Debug)]
pub struct RmspropStep {
    /// Multiplies the summed gradient into the mean gradient (and any clipping).
    pub scale: f32,
    /// This step's learning rate.
    pub lr: f32,
    /// Decay of the mean square (and of the mean gradient when centered).
    pub rho: f32,
    /// 1 - rho
    pub one_minus_rho: f32,
    /// Momentum; 0 applies the increment directly (the momentum slot stays 0).
    pub momentum: f32,
    /// Divide by sqrt(v - mg^2 + eps) instead of sqrt(v + eps).
    pub centered: bool,
    /// Added under the square root (Keras puts it inside).
    pub eps: f32,
    /// 1 - lr * weight_decay (decoupled weight decay; 1 when off)
    pub decay: f32,
}

multiversion! {
    /// One fused RMSprop update (Keras 3): v = rho v + (1 - rho) g^2; centered: mg = rho mg +
    /// (1 - rho) g and the denominator is v - mg^2 + eps, else v + eps; inc = lr g / sqrt(den);
    /// with momentum m = momentum m + inc and p -= m, else p -= inc. All buffers equal length.
    /// Returns whether every gradient was finite.
    pub fn rmsprop(params: &mut [f32], grad_sum: &[f32], v: &mut [f32], m: &mut [f32], mg: &mut [f32], k: RmspropStep) -> bool {
        let n = params.len();
        let (grad_sum, v, m, mg) = (&grad_sum[..n], &mut v[..n], &mut m[..n], &mut mg[..n]);
        let mut nonfinite = 0u32;
        for i in 0..n {
            nonfinite |= is_nonfinite(grad_sum[i]);
            let g = grad_sum[i] * k.scale;
            let vi = k.rho * v[i] + k.one_minus_rho * (g * g);
            v[i] = vi;
            let den = if k.centered {
                let mgi = k.rho * mg[i] + k.one_minus_rho * g;
                mg[i] = mgi;
                vi - mgi * mgi + k.eps
            } else {
                vi + k.eps
            };
            let inc = k.lr * g / den.sqrt();
            let step = if k.momentum > 0.0 {
                let mi = k.momentum * m[i] + inc;
                m[i] = mi;
                mi
            } else {
                inc
            };
            params[i] = params[i] * k.decay - step;
        }
        nonfinite == 0
    }
}

/// Nadam's per-step constants (Keras 3's formulation; see [`crate::engine::optim`]).
#[derive(Clone, Copy, Debug)]
pub struct NadamStep {
    /// Multiplies the summed gradient into the mean gradient (and any clipping).
    pub scale: f32,
    /// This step's learning rate.
    pub lr: f32,
    /// 1 - beta1
    pub one_minus_b1: f32,
    /// 1 - beta2
    pub one_minus_b2: f32,
    /// mu_{t+1} / (1 - mu_1 ... mu_{t+1}): multiplies m in m_hat.
    pub m_coef: f32,
    /// (1 - mu_t) / (1 - mu_1 ... mu_t): multiplies g in m_hat.
    pub g_coef: f32,
    /// 1 / (1 - beta2^t)
    pub inv_v_correction: f32,
    /// Added to sqrt(v_hat).
    pub eps: f32,
    /// 1 - lr * weight_decay (decoupled weight decay; 1 when off)
    pub decay: f32,
}

multiversion! {
    /// One fused Nadam update: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    /// p -= lr (m_coef m + g_coef g) / (sqrt(v inv_v_correction) + eps). Returns whether every
    /// gradient was finite.
    pub fn nadam(params: &mut [f32], grad_sum: &[f32], m: &mut [f32], v: &mut [f32], k: NadamStep) -> bool {
        let n = params.len();
        let (grad_sum, m, v) = (&grad_sum[..n], &mut m[..n], &mut v[..n]);
        let mut nonfinite = 0u32;
        for i in 0..n {
            nonfinite |= is_nonfinite(grad_sum[i]);
            let g = grad_sum[i] * k.scale;
            let mi = m[i] + (g - m[i]) * k.one_minus_b1;
            let vi = v[i] + (g * g - v[i]) * k.one_minus_b2;
            m[i] = mi;
            v[i] = vi;
            let m_hat = k.m_coef * mi + k.g_coef * g;
            params[i] = params[i] * k.decay - k.lr * m_hat / ((vi * k.inv_v_correction).sqrt() + k.eps);
        }
        nonfinite == 0
    }
}

/// Adagrad's per-step constants (Keras 3's formulation).
#[derive(Clone, Copy, Debug)]
pub struct AdagradStep {
    /// Multiplies the summed gradient into the mean gradient (and any clipping).
    pub scale: f32,
    /// This step's learning rate.
    pub lr: f32,
    /// Added under the square root (Keras puts it inside).
    pub eps: f32,
    /// 1 - lr * weight_decay (decoupled weight decay; 1 when off)
    pub decay: f32,
}

multiversion! {
    /// One fused Adagrad update: acc += g^2; p -= lr g / sqrt(acc + eps). Returns whether every
    /// gradient was finite.
    pub fn adagrad(params: &mut [f32], grad_sum: &[f32], acc: &mut [f32], k: AdagradStep) -> bool {
        let n = params.len();
        let (grad_sum, acc) = (&grad_sum[..n], &mut acc[..n]);
        let mut nonfinite = 0u32;
        for i in 0..n {
            nonfinite |= is_nonfinite(grad_sum[i]);
            let g = grad_sum[i] * k.scale;
            let a = acc[i] + g * g;
            acc[i] = a;
            params[i] = params[i] * k.decay - k.lr * g / (a + k.eps).sqrt();
        }
        nonfinite == 0
    }
}

/// 1 when `x` is NaN or infinite (all exponent bits set), else 0: an integer test, so that
/// OR-ing it over a loop vectorizes (a float reduction would have to keep its order).
#[inline(always)]
fn is_nonfinite(x: f32) -> u32 {
    ((x.to_bits() & 0x7f80_0000) == 0x7f80_0000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched kernel equals the plain scalar formula bit for bit.
    #[test]
    fn adam_kernel_matches_scalar_formula_bitwise() {
        let n = 1000;
        let g: Vec<f32> = (0..n).map(|i| ((i * 7919 % 997) as f32 - 498.0) * 1e-3).collect();
        let mut p: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let mut m = vec![0.01; n];
        let mut v = vec![0.002; n];
        let k = AdamStep { scale: 0.5, alpha: 0.001, one_minus_b1: 0.1, one_minus_b2: 0.001, eps: 1e-7, decay: 0.9999 };
        let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
        for i in 0..n {
            let gi = g[i] * k.scale;
            m2[i] += (gi - m2[i]) * k.one_minus_b1;
            v2[i] += (gi * gi - v2[i]) * k.one_minus_b2;
            p2[i] = p2[i] * k.decay - k.alpha * m2[i] / (v2[i].sqrt() + k.eps);
        }
        adam(&mut p, &g, &mut m, &mut v, k);
        assert!(p.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(v.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn column_sums_and_relu() {
        let mut acc = [1.0, 2.0];
        add_column_sums(&mut acc, &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
        assert_eq!(acc, [7.0, 62.0]);
        let mut z = [-1.0, 0.0, 2.5];
        relu(&mut z);
        assert_eq!(z, [0.0, 0.0, 2.5]);
        let mut d = [5.0, 5.0, 5.0];
        relu_backward(&z, &mut d);
        assert_eq!(d, [0.0, 0.0, 5.0]);
    }
}
