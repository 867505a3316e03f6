//! The exact eigen-projection of IRE's theoretical form, through LAPACK (feature `lapack`).
//!
//! - [`symmetric_eigen`] / [`exact_projector`]: dense symmetric eigendecomposition (LAPACK
//!   `syevd` through ndarray-linalg's `eigh`) of a Hessian small enough to hold densely; the
//!   eigenvectors of the `sharp_count` largest eigenvalues span the sharp space of an
//!   [`ExactProjector`].
//! - [`lanczos_top_k`] / [`lambda_max`] / [`lanczos_projector`]: the top eigenpairs of a
//!   Hessian known only through its Hessian-vector product, by Lanczos with full
//!   reorthogonalisation (memory `m·n` doubles for a Krylov space of dimension `m`: meant for
//!   a few dozen eigenpairs).
//!
//! Links the system OpenBLAS (`openblas-system`; Debian: `libopenblas-dev`). Set
//! `OPENBLAS_NUM_THREADS=1` when several processes share few cores.

use crate::projector::ExactProjector;
use ire_core::{Error, Result};
use ndarray::Array2;
use ndarray_linalg::{Eigh, UPLO};

fn invalid(field: &'static str, value: f64, allowed: &'static str) -> Error {
    Error::InvalidHyperParameter {
        field,
        value,
        allowed,
    }
}

fn lapack_error(e: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: "cpu".into(),
        message: format!("LAPACK eigh: {e}"),
    }
}

/// Ascending eigenvalues and row eigenvectors of a symmetric matrix held as an `Array2`.
fn eigh_rows(a: &Array2<f64>) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = a.nrows();
    let (w, v) = a.eigh(UPLO::Lower).map_err(lapack_error)?;
    if w.iter().any(|x| !x.is_finite()) || v.iter().any(|x| !x.is_finite()) {
        return Err(lapack_error("non-finite result"));
    }
    let mut rows = Vec::with_capacity(n * n);
    for c in 0..n {
        rows.extend(v.column(c).iter());
    }
    Ok((w.to_vec(), rows))
}

/// Eigendecomposition of a dense symmetric matrix (row-major `n × n`): eigenvalues in
/// ascending order and the matching unit eigenvectors as rows (row-major `n × n`), the same
/// contract as `ire_backend_cpu::projector::symmetric_eigen` (which this replaces for larger `n`).
///
/// The matrix is symmetrised first (`(A + Aᵀ)/2`), so a finite-difference Hessian with a
/// little asymmetry is accepted. Wrong size or a non-finite entry is an error.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if n == 0 {
        return Err(invalid("n", 0.0, ">= 1"));
    }
    if a.len() != n * n {
        return Err(Error::SizeMismatch {
            what: "symmetric matrix (n × n)".into(),
            expected: n * n,
            found: a.len(),
        });
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "matrix of the eigendecomposition".into(),
        });
    }
    let m = Array2::from_shape_fn((n, n), |(i, j)| 0.5 * (a[i * n + j] + a[j * n + i]));
    eigh_rows(&m)
}

/// The exact flat/sharp projector of a dense Hessian (row-major `n × n`): the eigenvectors of
/// the `sharp_count` largest eigenvalues are the sharp directions (`sharp_count ≤ n`).
pub fn exact_projector(hessian: &[f64], n: usize, sharp_count: usize) -> Result<ExactProjector> {
    if sharp_count > n {
        return Err(invalid("sharp_count", sharp_count as f64, "<= n"));
    }
    let (_, rows) = symmetric_eigen(hessian, n)?;
    ExactProjector::from_sharp_basis(n, rows[(n - sharp_count) * n..].to_vec())
}

/// Options of [`lanczos_top_k`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LanczosConfig {
    /// Largest Krylov dimension (0: `min(n, max(4k + 40, 200))`).
    pub max_dim: usize,
    /// Smallest Krylov dimension before convergence is tested (0: `min(n, 2k + 10)`); it lets
    /// restarts after an early breakdown find repeated eigenvalues.
    pub min_dim: usize,
    /// Convergence: every residual `‖H x − λ x‖ ≤ tol · |λ_max|`.
    pub tol: f64,
    /// Seed of the random start vector (and of restarts).
    pub seed: u64,
}

impl Default for LanczosConfig {
    fn default() -> Self {
        LanczosConfig {
            max_dim: 0,
            min_dim: 0,
            tol: 1e-10,
            seed: 0x1BE,
        }
    }
}

/// The top eigenpairs found by [`lanczos_top_k`].
#[derive(Clone, Debug, PartialEq)]
pub struct TopEigen {
    /// Eigenvalues, largest first.
    pub values: Vec<f64>,
    /// Unit eigenvectors as rows (row-major `k × n`), in the order of `values`.
    pub vectors: Vec<f64>,
    /// Residual estimates `‖H x − λ x‖` of each pair.
    pub residuals: Vec<f64>,
    /// Hessian-vector products computed.
    pub matvecs: usize,
    /// Whether every residual met the tolerance (false: `max_dim` was reached first).
    pub converged: bool,
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `w ← w − Σ (q·w) q` over the basis, twice (classical Gram-Schmidt, repeated: "twice is
/// enough" for orthogonality to working precision).
fn orthogonalise(w: &mut [f64], basis: &[Vec<f64>]) {
    for _ in 0..2 {
        for q in basis {
            let c = dot(q, w);
            for (x, &y) in w.iter_mut().zip(q) {
                *x -= c * y;
            }
        }
    }
}

/// A random unit vector orthogonal to `basis`, or `None` if the basis spans everything.
fn fresh_vector(n: usize, basis: &[Vec<f64>], rng: &mut SplitMix) -> Option<Vec<f64>> {
    for _ in 0..4 {
        let mut w: Vec<f64> = (0..n).map(|_| rng.next()).collect();
        let before = dot(&w, &w).sqrt();
        orthogonalise(&mut w, basis);
        let norm = dot(&w, &w).sqrt();
        if norm > 1e-8 * before {
            w.iter_mut().for_each(|x| *x /= norm);
            return Some(w);
        }
    }
    None
}

/// Eigen-decomposition of the tridiagonal `T` (diagonal `alpha`, off-diagonal `beta`).
fn tridiagonal_eigen(alpha: &[f64], beta: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
    let m = alpha.len();
    let t = Array2::from_shape_fn((m, m), |(i, j)| {
        if i == j {
            alpha[i]
        } else if i == j + 1 {
            beta[j]
        } else if j == i + 1 {
            beta[i]
        } else {
            0.0
        }
    });
    eigh_rows(&t)
}

/// The `k` largest eigenpairs of the symmetric operator `hvp` (`hvp(x, out)` writes `H x`
/// into `out`, both of length `n`), by Lanczos with full reorthogonalisation.
///
/// Errors: `n = 0`, `k` outside `1..=n`, a bad `tol`, an `hvp` error (passed through) or a
/// non-finite product.
pub fn lanczos_top_k<F>(n: usize, k: usize, mut hvp: F, cfg: &LanczosConfig) -> Result<TopEigen>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<()>,
{
    if n == 0 {
        return Err(invalid("n", 0.0, ">= 1"));
    }
    if k == 0 || k > n {
        return Err(invalid("k", k as f64, "1..=n"));
    }
    if !(cfg.tol > 0.0 && cfg.tol.is_finite()) {
        return Err(invalid("tol", cfg.tol, "> 0, finite"));
    }
    let max_dim = if cfg.max_dim == 0 {
        n.min((4 * k + 40).max(200))
    } else {
        cfg.max_dim.clamp(k, n)
    };
    let min_dim = if cfg.min_dim == 0 {
        n.min(2 * k + 10)
    } else {
        cfg.min_dim.min(max_dim)
    };
    let mut rng = SplitMix(cfg.seed);
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(max_dim);
    let mut alpha: Vec<f64> = Vec::with_capacity(max_dim);
    let mut beta: Vec<f64> = Vec::with_capacity(max_dim);
    let mut q = fresh_vector(n, &basis, &mut rng).ok_or_else(|| invalid("n", n as f64, ">= 1"))?;
    let mut w = vec![0.0; n];
    let mut next_check = min_dim.max(k);
    loop {
        w.iter_mut().for_each(|x| *x = 0.0);
        hvp(&q, &mut w)?;
        if w.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "Hessian-vector product (Lanczos)".into(),
            });
        }
        let a = dot(&q, &w);
        alpha.push(a);
        basis.push(q);
        orthogonalise(&mut w, &basis);
        let b = dot(&w, &w).sqrt();
        let j = basis.len();
        let scale = alpha
            .iter()
            .chain(&beta)
            .fold(0.0f64, |m, x| m.max(x.abs()));
        let breakdown = b <= 1e-12 * scale.max(f64::MIN_POSITIVE);
        if j >= next_check || j == max_dim || breakdown {
            let (vals, vecs) = tridiagonal_eigen(&alpha, &beta)?;
            let top = vals.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let b_eff = if breakdown { 0.0 } else { b };
            let enough = j >= k && j >= min_dim;
            let done = enough
                && (0..k).all(|i| {
                    let r = j - 1 - i;
                    (b_eff * vecs[r * j + j - 1]).abs() <= cfg.tol * top.max(f64::MIN_POSITIVE)
                });
            if done || j == max_dim {
                return Ok(ritz(&basis, &vals, &vecs, k.min(j), b_eff, n, done));
            }
            if j >= next_check {
                next_check = j + (j / 8).max(1);
            }
        }
        if breakdown {
            // An invariant subspace: continue from a fresh direction orthogonal to it.
            match fresh_vector(n, &basis, &mut rng) {
                Some(v) => {
                    beta.push(0.0);
                    q = v;
                }
                None => {
                    let (vals, vecs) = tridiagonal_eigen(&alpha, &beta)?;
                    let j = basis.len();
                    return Ok(ritz(&basis, &vals, &vecs, k.min(j), 0.0, n, true));
                }
            }
        } else {
            beta.push(b);
            q = w.iter().map(|x| x / b).collect();
        }
    }
}

/// The top `k` Ritz pairs from the Lanczos basis and the eigenpairs of `T`.
fn ritz(
    basis: &[Vec<f64>],
    vals: &[f64],
    vecs: &[f64],
    k: usize,
    b: f64,
    n: usize,
    converged: bool,
) -> TopEigen {
    let j = basis.len();
    let mut values = Vec::with_capacity(k);
    let mut vectors = vec![0.0; k * n];
    let mut residuals = Vec::with_capacity(k);
    for i in 0..k {
        let r = j - 1 - i;
        values.push(vals[r]);
        residuals.push((b * vecs[r * j + j - 1]).abs());
        let x = &mut vectors[i * n..(i + 1) * n];
        for (c, q) in basis.iter().enumerate() {
            let y = vecs[r * j + c];
            for (xi, &qi) in x.iter_mut().zip(q) {
                *xi += y * qi;
            }
        }
        let norm = dot(x, x).sqrt();
        if norm > 0.0 {
            x.iter_mut().for_each(|v| *v /= norm);
        }
    }
    TopEigen {
        values,
        vectors,
        residuals,
        matvecs: j,
        converged,
    }
}

/// The largest eigenvalue of the operator `hvp` (sharpness `λ_max`), by Lanczos.
///
/// Unlike [`lanczos_top_k`], which reports `converged: false`, this fails with
/// [`Error::Device`] when the Krylov dimension runs out before the residual meets `tol`.
pub fn lambda_max<F>(n: usize, hvp: F, cfg: &LanczosConfig) -> Result<f64>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<()>,
{
    let top = lanczos_top_k(n, 1, hvp, cfg)?;
    match (top.converged, top.values.first(), top.residuals.first()) {
        (true, Some(&l), _) => Ok(l),
        (_, l, r) => Err(Error::Device {
            backend: "cpu".into(),
            message: format!(
                "Lanczos did not converge in {} products (λ ≈ {l:?}, residual {r:?}): raise \
                 max_dim or tol",
                top.matvecs
            ),
        }),
    }
}

/// The exact projector whose sharp space is spanned by the top `sharp_count` eigenvectors of
/// `hvp`, found by Lanczos (for Hessians too big to hold densely). `sharp_count = 0` gives
/// `P = I`.
pub fn lanczos_projector<F>(
    n: usize,
    sharp_count: usize,
    hvp: F,
    cfg: &LanczosConfig,
) -> Result<ExactProjector>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<()>,
{
    if sharp_count == 0 {
        return ExactProjector::from_sharp_basis(n, Vec::new());
    }
    let top = lanczos_top_k(n, sharp_count, hvp, cfg)?;
    ExactProjector::from_sharp_basis(n, top.vectors)
}
