//! Matrix products on flat row-major slices, through ndarray's BLAS path (OpenBLAS sgemm).
//!
//! Views over existing slices cost no allocation, so these are safe to call every step.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// A row-major matrix view: `data` holds `rows * cols` floats.
pub struct Mat<'a> {
    /// (rows, cols) row-major.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl<'a> Mat<'a> {
    /// A view of `data`, which must hold `rows * cols` values.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat { data: &data[..rows * cols], rows, cols }
    }

    fn view(&self, transpose: bool) -> ArrayView2<'a, f32> {
        let v = ArrayView2::from_shape((self.rows, self.cols), self.data).expect("Mat::new checked the length");
        if transpose {
            v.reversed_axes()
        } else {
            v
        }
    }
}

/// c = alpha * op(a) * op(b) + beta * c, where op transposes when asked.
/// c: (rows of op(a), cols of op(b)), row-major.
pub fn gemm(alpha: f32, a: &Mat, trans_a: bool, b: &Mat, trans_b: bool, beta: f32, c: &mut [f32]) {
    let a = a.view(trans_a);
    let b = b.view(trans_b);
    let (m, n) = (a.nrows(), b.ncols());
    let mut c = ArrayViewMut2::from_shape((m, n), &mut c[..m * n]).expect("c has m * n floats");
    if a.ncols() == 0 {
        // An empty inner dimension (a rank with no rows in this batch): the product is zero.
        c.mapv_inplace(|v| beta * v);
        return;
    }
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_transposes_match_hand_computed_values() {
        // a = [[1, 2, 3], [4, 5, 6]] (2x3), b = [[1, 0], [0, 1], [1, 1]] (3x2)
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [0.0; 4];
        gemm(1.0, &Mat::new(&a, 2, 3), false, &Mat::new(&b, 3, 2), false, 0.0, &mut c);
        // a b = [[1+3, 2+3], [4+6, 5+6]]
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        // a^T a (3x3), accumulating into ones with beta = 1: [[17,22,27],[22,29,36],[27,36,45]] + 1
        let mut c = [1.0; 9];
        gemm(1.0, &Mat::new(&a, 2, 3), true, &Mat::new(&a, 2, 3), false, 1.0, &mut c);
        assert_eq!(c, [18.0, 23.0, 28.0, 23.0, 30.0, 37.0, 28.0, 37.0, 46.0]);
        // a a^T (2x2) = [[14, 32], [32, 77]]
        let mut c = [0.0; 4];
        gemm(1.0, &Mat::new(&a, 2, 3), false, &Mat::new(&a, 2, 3), true, 0.0, &mut c);
        assert_eq!(c, [14.0, 32.0, 32.0, 77.0]);
    }

    #[test]
    fn empty_inner_dimension_gives_beta_times_c() {
        let mut c = [3.0; 4];
        gemm(1.0, &Mat::new(&[], 2, 0), false, &Mat::new(&[], 0, 2), false, 0.0, &mut c);
        assert_eq!(c, [0.0; 4]);
    }
}
