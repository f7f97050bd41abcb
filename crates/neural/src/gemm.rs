//! A bounds-checked wrapper over `matrixmultiply::sgemm`, the one unsafe call of this crate.
#![allow(unsafe_code)]

/// `C = A·B + beta·C` for row-major `A` (`m × k`, row stride `lda`), `B` (`k × n`, row stride
/// `ldb`) and `C` (`m × n`, row stride `ldc`).
///
/// # Panics
/// When a slice is too short for its shape and stride, or a stride is shorter than its row.
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, k: usize, n: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, beta: f32, c: &mut [f32], ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldb >= n && ldc >= n, "gemm: a stride is shorter than its row");
    assert!(k == 0 || a.len() >= (m - 1) * lda + k, "gemm: A is too short");
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "gemm: B is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C is too short");
    if m <= 4 {
        // A few rows (one entity, a single window): packing costs more than it saves;
        // row-times-matrix as a sum of scaled rows of B, which vectorises.
        for i in 0..m {
            let ci = &mut c[i * ldc..i * ldc + n];
            if beta != 1.0 {
                for v in ci.iter_mut() {
                    *v *= beta;
                }
            }
            for (p, &av) in a[i * lda..i * lda + k].iter().enumerate() {
                let bp = &b[p * ldb..p * ldb + n];
                for (cv, bv) in ci.iter_mut().zip(bp) {
                    *cv += av * bv;
                }
            }
        }
        return;
    }
    // SAFETY: the assertions above keep every element the kernel reads or writes inside the
    // slices (row-major, unit column stride); `c` is borrowed mutably, so it aliases neither
    // `a` nor `b`; all dimensions fit isize (they index existing slices).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            ldb as isize,
            1,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strided_product_matches_the_naive_one() {
        // A: 2×3 in rows of 4, B: 3×2, C: 2×2 in rows of 3 with beta = 1.
        let a = [1.0, 2.0, 3.0, 9.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [10.0, 20.0, 7.0, 30.0, 40.0];
        super::gemm(2, 3, 2, &a, 4, &b, 2, 1.0, &mut c, 3);
        assert_eq!(c, [14.0, 25.0, 7.0, 40.0, 51.0]);
    }

    #[test]
    fn the_few_rows_path_and_the_packed_path_agree() {
        let (m, k, n) = (9, 7, 5);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 3) as f32 * 0.5).collect();
        let mut full = vec![1.0; m * n];
        super::gemm(m, k, n, &a, k, &b, n, 0.5, &mut full, n);
        for i in 0..m {
            let mut row = vec![1.0; n];
            super::gemm(1, k, n, &a[i * k..], k, &b, n, 0.5, &mut row, n);
            assert_eq!(row, full[i * n..(i + 1) * n]);
        }
    }

    #[test]
    #[should_panic(expected = "C is too short")]
    fn a_short_output_is_refused() {
        let mut c = [0.0; 3];
        super::gemm(2, 1, 2, &[1.0, 1.0], 1, &[1.0, 1.0], 2, 0.0, &mut c, 2);
    }
}
