//! The canonical per-element formula of every element-wise operation.
//!
//! Each backend computes exactly these expressions, in this order, with no fused multiply-add:
//! the reference and CPU backends call these functions, and the portable kernel source
//! (`kernels/ire_ops.cl`) spells the same expressions in C with FP contraction off. That is
//! what makes element-wise results identical bit for bit on every backend.

use crate::scalar::Scalar;

/// Host-computed scalars of one SGD step (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdScalars<T> {
    /// Learning rate.
    pub lr: T,
    /// Weight decay (coupled: added to the gradient).
    pub weight_decay: T,
    /// Momentum factor μ.
    pub momentum: T,
    /// `1 − dampening`, computed once on the host.
    pub dampening_complement: T,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// First step: the momentum buffer is set to the gradient instead of updated.
    pub first_step: bool,
}

/// Host-computed scalars of one AdamW step: everything that depends only on the step number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars<T> {
    /// `1 − lr·wd` (decoupled weight decay factor).
    pub decay: T,
    /// β1.
    pub beta1: T,
    /// `1 − β1`.
    pub one_minus_beta1: T,
    /// β2.
    pub beta2: T,
    /// `1 − β2`.
    pub one_minus_beta2: T,
    /// `lr / (1 − β1^t)`.
    pub step_size: T,
    /// `sqrt(1 − β2^t)`.
    pub bias_correction2_sqrt: T,
    /// ε.
    pub eps: T,
}

/// `y + a·x`.
#[inline(always)]
pub fn axpy<T: Scalar>(y: T, a: T, x: T) -> T {
    y + a * x
}

/// Plain SGD: `θ − lr·(g + wd·θ)`.
#[inline(always)]
pub fn sgd<T: Scalar>(theta: T, g: T, s: &SgdScalars<T>) -> T {
    let d = g + s.weight_decay * theta;
    theta - s.lr * d
}

/// SGD with momentum (PyTorch): returns `(θ', b')`.
///
/// `d = g + wd·θ`; `b' = d` on the first step, else `μ·b + (1 − dampening)·d`;
/// `u = d + μ·b'` (Nesterov) or `b'`; `θ' = θ − lr·u`.
#[inline(always)]
pub fn sgd_momentum<T: Scalar>(theta: T, g: T, b: T, s: &SgdScalars<T>) -> (T, T) {
    let d = g + s.weight_decay * theta;
    let b2 = if s.first_step {
        d
    } else {
        s.momentum * b + s.dampening_complement * d
    };
    let u = if s.nesterov { d + s.momentum * b2 } else { b2 };
    (theta - s.lr * u, b2)
}

/// AdamW (PyTorch, decoupled weight decay): returns `(θ', m', v')`.
///
/// `θd = θ·(1 − lr·wd)`; `m' = β1·m + (1−β1)·g`; `v' = β2·v + (1−β2)·(g·g)`;
/// `den = sqrt(v')/sqrt(1−β2^t) + ε`; `θ' = θd − step_size·(m'/den)`.
#[inline(always)]
pub fn adamw<T: Scalar>(theta: T, g: T, m: T, v: T, s: &AdamWScalars<T>) -> (T, T, T) {
    let td = theta * s.decay;
    let m2 = s.beta1 * m + s.one_minus_beta1 * g;
    let v2 = s.beta2 * v + s.one_minus_beta2 * (g * g);
    let den = v2.sqrt() / s.bias_correction2_sqrt + s.eps;
    (td - s.step_size * (m2 / den), m2, v2)
}

/// The IRE boost of a base step: `θ_base + (κ·n)·(θ_base − θ_old)`, `n ∈ {0, 1}`.
#[inline(always)]
pub fn boost<T: Scalar>(theta_base: T, theta_old: T, n: u8, kappa: T) -> T {
    let kn = if n != 0 { kappa } else { T::zero() };
    theta_base + kn * (theta_base - theta_old)
}

/// EMA of the squared estimate: `β·h + (1−β)·(g·g)`.
#[inline(always)]
pub fn ema_square<T: Scalar>(h: T, g: T, beta: T, one_minus_beta: T) -> T {
    beta * h + one_minus_beta * (g * g)
}

/// EMA of the absolute estimate: `β·h + (1−β)·|g|`.
#[inline(always)]
pub fn ema_abs<T: Scalar>(h: T, g: T, beta: T, one_minus_beta: T) -> T {
    beta * h + one_minus_beta * g.abs()
}

/// EMA of a product (Hutchinson `z ⊙ Hz`): `β·h + (1−β)·(a·b)`.
#[inline(always)]
pub fn ema_product<T: Scalar>(h: T, a: T, b: T, beta: T, one_minus_beta: T) -> T {
    beta * h + one_minus_beta * (a * b)
}

/// The IRE mask rule: flat (1) iff `h ≤ τ`.
#[inline(always)]
pub fn mask_le<T: Scalar>(h: T, tau: T) -> u8 {
    (h <= tau) as u8
}

/// ASAM perturbation: `θ + ((θ·θ)·g)·s`, with `s = ρ / (‖|θ| ⊙ g‖ + 1e−12)` from the host.
#[inline(always)]
pub fn asam_perturb<T: Scalar>(theta: T, g: T, s: T) -> T {
    theta + ((theta * theta) * g) * s
}

/// SAM perturbation: `θ + g·s` with `s = ρ / (‖g‖ + 1e−12)` (the same bits as `axpy(θ, s, g)`).
#[inline(always)]
pub fn sam_perturb<T: Scalar>(theta: T, g: T, s: T) -> T {
    axpy(theta, s, g)
}
