//! A deterministic symmetric eigensolver: cyclic Jacobi in f64.

/// Eigen-decomposition of the symmetric `n x n` matrix `a` (row-major).
///
/// Returns `(values, vectors)` where `vectors[k]` is the unit eigenvector of
/// `values[k]`, sorted by decreasing eigenvalue (ties by original index).
/// Cyclic Jacobi sweeps until every off-diagonal entry is negligible
/// relative to the diagonal; only `+ - * /` and `sqrt` are used, in a fixed
/// order, so the result is identical on every IEEE-754 platform.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(a.len(), n * n);
    let mut a = a.to_vec();
    // v[k] is row k of V^T, i.e. the k-th eigenvector once converged.
    let mut v = vec![vec![0f64; n]; n];
    for (k, row) in v.iter_mut().enumerate() {
        row[k] = 1.0;
    }
    for _sweep in 0..64 {
        let diag = (0..n).map(|i| a[i * n + i].abs()).fold(0f64, f64::max);
        let mut off = 0f64;
        for p in 0..n {
            for q in p + 1..n {
                off = off.max(a[p * n + q].abs());
            }
        }
        if off <= 1e-15 * diag || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-18 * diag {
                    continue;
                }
                let app = a[p * n + p];
                let aqq = a[q * n + q];
                let theta = (aqq - app) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    let t = 1.0 / (theta.abs() + (theta * theta + 1.0).sqrt());
                    if theta < 0.0 {
                        -t
                    } else {
                        t
                    }
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    if k == p || k == q {
                        continue;
                    }
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    let np = c * akp - s * akq;
                    let nq = s * akp + c * akq;
                    a[k * n + p] = np;
                    a[p * n + k] = np;
                    a[k * n + q] = nq;
                    a[q * n + k] = nq;
                }
                a[p * n + p] = app - t * apq;
                a[q * n + q] = aqq + t * apq;
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                // p < q always.
                let (lo, hi) = v.split_at_mut(q);
                let (vp, vq) = (&mut lo[p], &mut hi[0]);
                for (x, y) in vp.iter_mut().zip(vq.iter_mut()) {
                    let (xp, xq) = (*x, *y);
                    *x = c * xp - s * xq;
                    *y = s * xp + c * xq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order.iter().map(|&i| v[i].clone()).collect();
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonalises_a_small_matrix() {
        let n = 5;
        let mut a = vec![0f64; n * n];
        let mut x = 1u64;
        for i in 0..n {
            for j in i..n {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((x >> 33) as f64) / (1u64 << 31) as f64 - 0.5;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, n);
        for w in vals.windows(2) {
            assert!(w[0] >= w[1]);
        }
        for (k, vk) in vecs.iter().enumerate() {
            // A v = lambda v
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * vk[j]).sum();
                assert!((av - vals[k] * vk[i]).abs() < 1e-10);
            }
            for (l, vl) in vecs.iter().enumerate() {
                let d: f64 = vk.iter().zip(vl).map(|(x, y)| x * y).sum();
                let want = if k == l { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-10);
            }
        }
    }
}
