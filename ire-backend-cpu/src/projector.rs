//! IRE's theoretical form with the exact projector: `θ ← θ − η (u + κ P u)`, where `P` projects
//! onto the flat directions, `P = I − S Sᵀ` for an orthonormal basis `S` of sharp directions.
//!
//! For small problems only (dense `n × n`, host `f64`). The basis comes from the caller, from
//! [`symmetric_eigen`] (cyclic Jacobi, here), or from LAPACK `eigh` in the CPU backend.

use ire_core::{Error, Result, check, check_len};

/// Orthonormality tolerance of a caller's basis (`|⟨s_i, s_j⟩ − δ_ij|`).
pub const ORTHONORMAL_TOL: f64 = 1e-8;

/// The flat-direction projector `P = I − S Sᵀ` in dimension `n`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExactProjector {
    n: usize,
    /// Sharp directions, row-major `r × n`.
    sharp: Vec<f64>,
}

impl ExactProjector {
    /// From `r` orthonormal sharp directions (row-major `r × n`); checks orthonormality.
    pub fn from_sharp_basis(n: usize, sharp: Vec<f64>) -> Result<Self> {
        if n == 0 || !sharp.len().is_multiple_of(n) {
            return Err(Error::SizeMismatch {
                what: format!("sharp basis (rows of length {n})"),
                expected: n * (sharp.len() / n.max(1)),
                found: sharp.len(),
            });
        }
        if sharp.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "sharp basis".into(),
            });
        }
        let r = sharp.len() / n;
        for i in 0..r {
            for j in 0..=i {
                let d: f64 = (0..n).map(|c| sharp[i * n + c] * sharp[j * n + c]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                if (d - want).abs() > ORTHONORMAL_TOL {
                    return Err(Error::State(format!(
                        "sharp basis is not orthonormal: <s{i}, s{j}> = {d}"
                    )));
                }
            }
        }
        Ok(ExactProjector { n, sharp })
    }

    /// From a dense symmetric Hessian (row-major `n × n`): the `sharp_count` eigenvectors of
    /// the largest eigenvalues are the sharp directions.
    pub fn from_hessian(hessian: &[f64], n: usize, sharp_count: usize) -> Result<Self> {
        check("sharp_count", sharp_count as f64, sharp_count <= n, "<= n")?;
        let (_, vecs) = symmetric_eigen(hessian, n)?;
        // Eigenpairs come in ascending order: the sharp ones are the last rows.
        let sharp = vecs[(n - sharp_count) * n..].to_vec();
        Ok(ExactProjector { n, sharp })
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.n
    }

    /// Number of sharp directions.
    pub fn sharp_rank(&self) -> usize {
        self.sharp.len() / self.n
    }

    /// `P u = u − S (Sᵀ u)`.
    pub fn project_flat(&self, u: &[f64]) -> Result<Vec<f64>> {
        check_len("projected vector", self.n, u.len())?;
        let mut out = u.to_vec();
        for s in self.sharp.chunks_exact(self.n) {
            let c: f64 = s.iter().zip(u).map(|(a, b)| a * b).sum();
            for (o, a) in out.iter_mut().zip(s) {
                *o -= c * a;
            }
        }
        Ok(out)
    }

    /// One step of IRE's theoretical form: `θ ← θ − η (u + κ P u)`.
    pub fn ire_step(&self, theta: &mut [f64], u: &[f64], lr: f64, kappa: f64) -> Result<()> {
        check_len("parameters", self.n, theta.len())?;
        check(
            "kappa",
            kappa,
            kappa >= 0.0 && kappa.is_finite(),
            ">= 0, finite",
        )?;
        let pu = self.project_flat(u)?;
        for ((t, &ui), &pi) in theta.iter_mut().zip(u).zip(&pu) {
            *t -= lr * (ui + kappa * pi);
        }
        Ok(())
    }
}

/// Eigen-decomposition of a dense symmetric matrix (row-major `n × n`) by cyclic Jacobi
/// rotations: returns eigenvalues in ascending order and the matching unit eigenvectors as
/// rows (row-major `n × n`). Meant for small `n` (it is O(n³) per sweep).
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    check_len("symmetric matrix", n * n, a.len())?;
    if a.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "matrix of the eigen-decomposition".into(),
        });
    }
    let mut m = a.to_vec();
    // v holds eigenvectors as columns during the sweeps.
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let app = m[p * n + p];
                let aqq = m[q * n + q];
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let mkp = m[k * n + p];
                    let mkq = m[k * n + q];
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let mpk = m[p * n + k];
                    let mqk = m[q * n + k];
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut rows = vec![0.0; n * n];
    for (r, &i) in order.iter().enumerate() {
        for k in 0..n {
            rows[r * n + k] = v[k * n + i];
        }
    }
    Ok((values, rows))
}
