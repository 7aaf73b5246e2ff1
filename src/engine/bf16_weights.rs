//! The bf16 copy of the parameters that bf16 products read ([`crate::engine::mixed`]): where
//! each value goes, and the one way the copy is written (by the optimizer's update as it goes,
//! and whole after loading or restoring parameters).
//!
//! The buffer starts with the plain copy, index for index the flat parameter buffer
//! (n_params,). After it come the kernels that forward products read in oneDNN's packed
//! layout ([`Packing`]): with the weights packed once per step here, the products do not
//! repack them at every call (measured on an Intel Sapphire Rapids VM with AMX, W3's 784 x
//! 1024 and 1024 x 1024 forward products: 0.47 and 0.44 ms plain, 0.36 and 0.36 ms packed, 2
//! threads). A packed kernel keeps its plain copy only when another product reads it (dx = dz
//! W^T, which has no input-gradient product in the first layer).

use crate::engine::bf16;
use crate::engine::onednn::Packing;
use std::ops::Range;

/// One kernel's packed copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedKernel {
    /// The kernel's (in, out) values in the flat parameter buffer, row-major.
    pub span: Range<usize>,
    /// Where the packed copy starts in the bf16 buffer (a multiple of 32: on a cache line).
    pub at: usize,
    /// Its layout, padding included.
    pub packing: Packing,
    /// Whether the kernel's plain copy is written too.
    pub plain_too: bool,
}

/// The layout of a bf16 copy of the parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bf16Layout {
    n_params: usize,
    /// In increasing order of span.
    packed: Vec<PackedKernel>,
    len: usize,
}

impl Bf16Layout {
    /// The plain copy alone: (n_params,).
    pub fn plain(n_params: usize) -> Bf16Layout {
        Bf16Layout { n_params, packed: Vec::new(), len: n_params }
    }

    /// The plain copy followed by the packed kernels `(span, packing, plain_too)`, whose spans
    /// must be disjoint and within the parameters.
    pub fn new(n_params: usize, kernels: impl IntoIterator<Item = (Range<usize>, Packing, bool)>) -> Bf16Layout {
        let mut len = n_params;
        let mut packed: Vec<PackedKernel> = kernels
            .into_iter()
            .map(|(span, packing, plain_too)| {
                assert!(span.end <= n_params && span.len() == packing.k * packing.n, "a kernel outside the parameters");
                let at = len.next_multiple_of(32);
                len = at + packing.len;
                PackedKernel { span, at, packing, plain_too }
            })
            .collect();
        packed.sort_by_key(|p| p.span.start);
        assert!(packed.windows(2).all(|w| w[0].span.end <= w[1].span.start), "overlapping kernels");
        Bf16Layout { n_params, packed, len }
    }

    /// Values in the whole copy.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the copy is empty (no parameters).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The greatest index at most `i` at which a range of the update may end without splitting
    /// a pair of rows of a packed kernel (whose pairs are then written whole, see
    /// [`packed_runs`]); `i` itself outside packed kernels, or when that index would not be
    /// above `floor`.
    pub fn cut_at_or_below(&self, i: usize, floor: usize) -> usize {
        let Some(k) = self.packed.iter().find(|k| k.span.start < i && i < k.span.end) else { return i };
        let pair = 2 * k.packing.n;
        let cut = k.span.start + (i - k.span.start) / pair * pair;
        if cut > floor {
            cut
        } else {
            i
        }
    }

    /// The packed copy of the kernel at `span`, if it has one.
    pub fn packed(&self, span: &Range<usize>) -> Option<&PackedKernel> {
        self.packed.iter().find(|p| p.span == *span)
    }

    /// Writes the whole copy of `params` (n_params,) into `buffer` (len,). The packed
    /// kernels' padding is never written: it must be zero, as in a new buffer.
    pub fn write_all(&self, buffer: &mut [u16], params: &[f32]) {
        assert!(buffer.len() >= self.len && params.len() == self.n_params);
        // SAFETY: buffer holds len values, borrowed mutably here.
        unsafe { self.write(buffer.as_mut_ptr(), 0..self.n_params, params) }
    }

    /// Writes the copy of parameters `r` (indices into the flat buffer), whose values are
    /// `values` (r.len(),): their plain copy and their places in packed kernels.
    ///
    /// # Safety
    /// `buffer` points to [`Bf16Layout::len`] values, and nothing else reads or writes the
    /// places of `r` meanwhile (threads may write disjoint ranges at once: each value has its
    /// own places, and the packed ones are written by 16-bit masked stores).
    pub unsafe fn write(&self, buffer: *mut u16, r: Range<usize>, values: &[f32]) {
        debug_assert!(r.end <= self.n_params && values.len() == r.len());
        let mut at = r.start;
        for kernel in &self.packed {
            let (lo, hi) = (at.max(kernel.span.start), r.end.min(kernel.span.end));
            if lo >= hi {
                continue;
            }
            // SAFETY: in-bounds ranges of the caller's buffer, and only the places of r.
            unsafe {
                write_plain(buffer, at..lo, &values[at - r.start..lo - r.start]);
                let plain = kernel.plain_too.then(|| buffer.add(lo));
                let at_in_kernel = lo - kernel.span.start..hi - kernel.span.start;
                write_packed(kernel, buffer.add(kernel.at), plain, at_in_kernel, &values[lo - r.start..hi - r.start]);
            }
            at = hi;
        }
        // SAFETY: as above.
        unsafe { write_plain(buffer, at..r.end, &values[at - r.start..]) };
    }
}

/// A bf16 copy of the parameters to write: its buffer, (layout.len(),), and its layout.
pub struct Bf16Copy<'a> {
    /// The copy.
    pub buffer: &'a mut [u16],
    /// Where each value goes.
    pub layout: &'a Bf16Layout,
}

impl Bf16Copy<'_> {
    /// The same copy, borrowed for a shorter time (to write it in several calls).
    pub fn reborrow(&mut self) -> Bf16Copy<'_> {
        Bf16Copy { buffer: self.buffer, layout: self.layout }
    }
}

/// The plain copy of parameters `r`.
///
/// # Safety
/// As [`Bf16Layout::write`].
unsafe fn write_plain(buffer: *mut u16, r: Range<usize>, values: &[f32]) {
    if !r.is_empty() {
        // SAFETY: the caller's in-bounds places, written by nobody else meanwhile.
        bf16::convert(values, unsafe { std::slice::from_raw_parts_mut(buffer.add(r.start), r.len()) });
    }
}

/// Values `r` of a kernel (indices within its row-major (k, n) matrix) into its packed copy
/// at `packed` and, when given, its plain copy at `plain` (where value r.start goes).
///
/// # Safety
/// As [`Bf16Layout::write`].
unsafe fn write_packed(
    kernel: &PackedKernel,
    packed: *mut u16,
    plain: Option<*mut u16>,
    r: Range<usize>,
    values: &[f32],
) {
    #[cfg(target_arch = "x86_64")]
    if bf16::has_avx512bw() {
        // SAFETY: the CPU has the features; the caller's contract.
        return unsafe { write_packed_avx512(kernel.packing, packed, plain, r, values) };
    }
    // SAFETY: the caller's contract.
    unsafe {
        packed_runs(
            kernel.packing,
            packed,
            plain,
            r,
            values,
            |s, d, p| bf16::convert_interleaved_portable(s, d, p),
            |a, b, d, p| bf16::convert_pair_portable(a, b, d, p),
        )
    }
}

/// [`write_packed`] compiled for AVX-512 with its 16-bit lanes, the conversion inlined.
///
/// # Safety
/// As [`Bf16Layout::write`], on a CPU with [`bf16::has_avx512bw`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn write_packed_avx512(p: Packing, packed: *mut u16, plain: Option<*mut u16>, r: Range<usize>, values: &[f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        packed_runs(
            p,
            packed,
            plain,
            r,
            values,
            |s, d, q| bf16::convert_interleaved_avx512(s, d, q),
            |a, b, d, q| bf16::convert_pair_avx512(a, b, d, q),
        )
    }
}

/// Splits values `r` of a packed kernel into runs within one column block: where both rows
/// of a pair are in `r`, runs of the pair, contiguous in the packed layout, handed to
/// `store_pair` (row a's values, row b's, packed start, plain starts); elsewhere runs of one
/// row, every other 16-bit place (the partner row's places are between), handed to `store`
/// (values, packed start, plain start).
///
/// # Safety
/// As [`Bf16Layout::write`]; `store` and `store_pair` write only the places they are given.
#[inline(always)]
unsafe fn packed_runs(
    p: Packing,
    packed: *mut u16,
    plain: Option<*mut u16>,
    r: Range<usize>,
    values: &[f32],
    store: impl Fn(&[f32], *mut u16, Option<*mut u16>),
    store_pair: impl Fn(&[f32], &[f32], *mut u16, Option<(*mut u16, *mut u16)>),
) {
    let (mut row, mut col) = (r.start / p.n, r.start % p.n);
    let mut done = 0;
    while done < values.len() {
        if col == 0 && row % 2 == 0 && values.len() - done >= 2 * p.n {
            let (a, b) = values[done..done + 2 * p.n].split_at(p.n);
            let mut c = 0;
            while c < p.n {
                let run = p.n_block.min(p.n - c);
                // SAFETY: as below, for both rows.
                unsafe {
                    store_pair(
                        &a[c..c + run],
                        &b[c..c + run],
                        packed.add(p.offset(row, c)),
                        plain.map(|q| (q.add(done + c), q.add(done + p.n + c))),
                    )
                };
                c += run;
            }
            done += 2 * p.n;
            row += 2;
            continue;
        }
        let run = (p.n_block - (col & (p.n_block - 1))).min(p.n - col).min(values.len() - done);
        // SAFETY: the offsets of a run lie within the packed copy (checked when the layout was
        // made) and the plain places within the caller's range.
        unsafe { store(&values[done..done + run], packed.add(p.offset(row, col)), plain.map(|q| q.add(done))) };
        done += run;
        col += run;
        if col == p.n {
            (row, col) = (row + 1, 0);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The layout oneDNN 2.6 chose for bf16 weights on AMX ("BA16a64b2a") for a (k, n) matrix.
    pub(crate) fn amx_like_packing(k: usize, n: usize) -> Packing {
        let (kp, np) = (k.next_multiple_of(32), n.next_multiple_of(64));
        Packing { k, n, k_pairs: 16, n_block: 64, k_stride: 32 * 64, n_stride: kp * 64, len: kp * np }
    }

    /// A packing like oneDNN's AMX one, small: pairs of rows interleaved, row blocks of 4 rows,
    /// column blocks of 8, a 10 x 20 matrix padded to 12 x 24.
    fn small_packing() -> Packing {
        let (k_pairs, n_block, kp, np) = (2, 8, 12, 24);
        Packing {
            k: 10,
            n: 20,
            k_pairs,
            n_block,
            k_stride: 2 * k_pairs * n_block,
            n_stride: kp * n_block,
            len: kp * np,
        }
    }

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0 + if i % 11 == 0 { f32::NAN } else { 0.0 }).collect()
    }

    /// Places by the definition: each parameter's bf16 at its plain index and, in a packed
    /// kernel, at the offset of its (row, col); all else zero.
    fn expected(layout: &Bf16Layout, params: &[f32]) -> Vec<u16> {
        let mut out = vec![0u16; layout.len()];
        for (i, &v) in params.iter().enumerate() {
            let b = bf16::from_f32(v);
            match layout.packed.iter().find(|k| k.span.contains(&i)) {
                Some(k) => {
                    let j = i - k.span.start;
                    out[k.at + k.packing.offset(j / k.packing.n, j % k.packing.n)] = b;
                    if k.plain_too {
                        out[i] = b;
                    }
                }
                None => out[i] = b,
            }
        }
        out
    }

    #[test]
    fn packing_offsets_fill_the_padded_matrix_once() {
        let p = small_packing();
        let mut seen = vec![0; p.len];
        for row in 0..12 {
            for col in 0..24 {
                seen[p.offset(row, col)] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    #[test]
    fn writing_in_any_pieces_equals_the_definition() {
        let p = small_packing();
        // A bias between two kernels, one packed only, one packed and plain.
        let n_params = 7 + 200 + 5 + 200 + 3;
        let layout = Bf16Layout::new(n_params, [(7..207, p, false), (212..412, p, true)]);
        let params = values(n_params);
        let want = expected(&layout, &params);
        let mut whole = vec![0u16; layout.len()];
        layout.write_all(&mut whole, &params);
        assert_eq!(whole, want);
        for piece in [1, 3, 16, 17, 64, 100] {
            let mut got = vec![0u16; layout.len()];
            for start in (0..n_params).step_by(piece) {
                let r = start..(start + piece).min(n_params);
                // SAFETY: got holds len values; one piece at a time.
                unsafe { layout.write(got.as_mut_ptr(), r.clone(), &params[r]) };
            }
            assert_eq!(got, want, "pieces of {piece}");
        }
    }
}
