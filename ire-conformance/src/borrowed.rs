//! The check of a backend running on memory its caller owns (a framework's tensors, wrapped
//! without a copy): AdmIRE steps in place on the caller's buffer, against the reference
//! backend from the same start.

use std::vec::Vec;

use ire_core::backend::Backend;
use ire_core::optim::{AdamW, AdamWConfig, EstimateInput, Ire, IreConfig, IreStep};
use ire_core::reference::Reference;

/// The start of the check: `n` parameters in [-1, 1).
pub fn theta0(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect()
}

/// The gradient of step `t` of the check (`n` values in [-1.2, 1.2)).
pub fn gradient(n: usize, t: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 13 + t * 7) % 97) as f32 / 40.0 - 1.2)
        .collect()
}

/// Steps of the check.
pub const STEPS: usize = 6;

/// AdmIRE as the check runs it: AdamW's defaults, a refresh every 2 steps.
fn admire<B: Backend>() -> Ire<B, f32, AdamW<B, f32>> {
    let cfg = IreConfig {
        refresh_every: 2,
        ..IreConfig::default()
    };
    Ire::new(AdamW::new(AdamWConfig::default()).unwrap(), cfg).unwrap()
}

/// Runs [`STEPS`] steps of AdmIRE (AdamW, a refresh every 2 steps) on `b` in place on `p`, a
/// buffer over the caller's memory that holds [`theta0`] of its length; each step's
/// [`gradient`] is put into the caller's memory and wrapped by `borrow_grad`, which returns
/// the buffer and whatever must stay alive while it is used. The same steps run on the
/// reference backend; returns the reference's parameters, which the caller compares bit for
/// bit with its own memory (AdamW and the boost are element-wise).
pub fn admire_in_place<B: Backend, K>(
    b: &B,
    p: &mut B::Buffer<f32>,
    mut borrow_grad: impl FnMut(&[f32]) -> (K, B::Buffer<f32>),
) -> Vec<f32> {
    let n = b.len(p);
    let (mut on_b, mut oracle) = (admire::<B>(), admire::<Reference>());
    let mut q = vec![Reference.alloc_from(&theta0(n)).unwrap()];
    for t in 0..STEPS {
        let g = gradient(n, t);
        let (_keep, gb) = borrow_grad(&g);
        let gb = std::slice::from_ref(&gb);
        let due = on_b.refresh_due();
        let estimate = due.then_some(EstimateInput::Gradient(gb));
        let step = IreStep { lr: 1e-2, estimate };
        on_b.step(b, std::slice::from_mut(p), gb, step).unwrap();
        let rg = vec![Reference.alloc_from(&g).unwrap()];
        let due = oracle.refresh_due();
        let estimate = due.then_some(EstimateInput::Gradient(&rg));
        let step = IreStep { lr: 1e-2, estimate };
        oracle.step(&Reference, &mut q, &rg, step).unwrap();
    }
    b.synchronize().unwrap();
    Reference.to_vec(&q[0]).unwrap()
}
