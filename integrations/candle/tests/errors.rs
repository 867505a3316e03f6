//! Bad input is a typed error naming the problem, and the variables and the optimizer's state
//! are left as they were.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer as _;
use common::{Batches, Mlp};
use ire_candle::{AdmIre, Error, Params, SamIre, SamParams};
use ire_core::optim::{ParamGroup, ParamGroups};
use ire_core::{AdamWConfig, IreConfig, SamConfig, SgdConfig};

fn ire() -> IreConfig {
    IreConfig {
        kappa: 1.0,
        gamma: 0.5,
        refresh_every: 2,
        ..IreConfig::default()
    }
}

fn params() -> Params<AdamWConfig> {
    Params::new(1e-3, AdamWConfig::default(), ire())
}

fn grads(m: &Mlp) -> GradStore {
    let (x, y) = Batches::new(32).get(0, DType::F32);
    m.loss_grads(&x, &y).1
}

#[test]
fn variables_that_cannot_be_stepped_are_refused() {
    let f32v = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let f64v = Var::zeros(3, DType::F64, &Device::Cpu).unwrap();
    let ints = Var::zeros(3, DType::U32, &Device::Cpu).unwrap();
    let r = AdmIre::<f32>::build(vec![f32v.clone(), f64v], params());
    assert!(
        matches!(
            r,
            Err(Error::DType {
                var: 1,
                found: DType::F64,
                ..
            })
        ),
        "{:?}",
        r.err()
    );
    let r = AdmIre::<f32>::build(vec![f32v.clone(), f32v.clone()], params());
    assert!(matches!(r, Err(Error::DuplicateVar { var: 1, first: 0 })));
    // Integer variables are skipped, as candle's own optimizers do.
    let opt = AdmIre::<f32>::build(vec![ints, f32v], params()).unwrap();
    assert_eq!(opt.vars().len(), 1);
    // Groups must cover the float variables.
    let m = Mlp::new(1, 8);
    let p = Params {
        groups: Some(ParamGroups::new(vec![ParamGroup::default()], vec![0, 0]).unwrap()),
        ..params()
    };
    assert!(matches!(
        AdmIre::<f32>::build(m.vars.clone(), p),
        Err(Error::Core(ire_core::Error::SizeMismatch { .. }))
    ));
}

#[test]
fn a_due_refresh_that_was_not_done_refuses_the_step() {
    let m = Mlp::new(2, 8);
    let mut opt = AdmIre::<f32>::build(m.vars.clone(), params()).unwrap();
    let before = m.values();
    assert!(opt.refresh_due());
    let r = opt.try_step(&grads(&m));
    assert!(
        matches!(r, Err(Error::Core(ire_core::Error::Protocol(_)))),
        "{r:?}"
    );
    assert_eq!(m.values(), before);
    assert_eq!(opt.ire().step_count(), 0);
    // Through candle's trait the error is candle's, and nothing moved either.
    assert!(opt.step(&grads(&m)).is_err());
    assert_eq!(m.values(), before);
}

#[test]
fn gradients_that_do_not_fit_are_refused() {
    let m = Mlp::new(3, 8);
    let mut opt = AdmIre::<f32>::build(m.vars.clone(), params()).unwrap();
    let g = grads(&m);
    opt.refresh(&g).unwrap();
    let before = m.values();
    let mut wrong_shape = grads(&m);
    wrong_shape.insert(
        &m.vars[1],
        Tensor::zeros(9, DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.try_step(&wrong_shape),
        Err(Error::Shape { var: 1, .. })
    ));
    let mut wrong_type = grads(&m);
    wrong_type.insert(
        &m.vars[3],
        Tensor::zeros(10, DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.try_step(&wrong_type),
        Err(Error::DType {
            var: 3,
            what: "the gradient",
            ..
        })
    ));
    opt.set_learning_rate(-1.0);
    assert!(matches!(
        opt.try_step(&g),
        Err(Error::Core(ire_core::Error::InvalidHyperParameter {
            field: "lr",
            ..
        }))
    ));
    assert_eq!(m.values(), before);
    assert_eq!(opt.ire().step_count(), 0);
    // A non-contiguous gradient is made contiguous and used.
    opt.set_learning_rate(1e-3);
    let mut strided = grads(&m);
    let w = strided.get(&m.vars[0]).unwrap().clone();
    let t = w.t().unwrap().contiguous().unwrap().t().unwrap();
    assert!(!t.is_contiguous());
    strided.insert(&m.vars[0], t);
    opt.try_step(&strided).unwrap();
    assert_ne!(m.values(), before);
}

fn mask_values(opt: &AdmIre<f32>) -> Vec<Vec<u8>> {
    opt.mask()
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap())
        .collect()
}

#[test]
fn a_non_finite_estimate_is_refused_and_the_mask_kept() {
    let m = Mlp::new(4, 8);
    let mut opt = AdmIre::<f32>::build(m.vars.clone(), params()).unwrap();
    let g = grads(&m);
    opt.refresh(&g).unwrap();
    opt.step(&g).unwrap();
    opt.step(&g).unwrap();
    assert!(opt.refresh_due());
    let mask = mask_values(&opt);
    let mut bad = grads(&m);
    let mut w = vec![0.5f32; 8 * 64];
    w[17] = f32::NAN;
    bad.insert(
        &m.vars[0],
        Tensor::from_vec(w, (8, 64), &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.refresh(&bad),
        Err(Error::Core(ire_core::Error::NonFinite { .. }))
    ));
    assert_eq!(mask_values(&opt), mask);
    // A gradient store of another model.
    let other = Mlp::new(5, 8);
    assert!(matches!(
        opt.refresh(&grads(&other)),
        Err(Error::EmptyEstimate)
    ));
    assert_eq!(mask_values(&opt), mask);
    assert!(opt.refresh_due());
}

#[test]
fn sam_needs_every_gradient_and_separate_memory() {
    let m = Mlp::new(5, 8);
    let mut opt = SamIre::<f32>::build(
        m.vars.clone(),
        Params::new(
            0.1,
            SamParams {
                sam: SamConfig::default(),
                base: SgdConfig::default(),
            },
            ire(),
        ),
    )
    .unwrap();
    let g = grads(&m);
    opt.refresh(&g).unwrap();
    let before = m.values();
    let mut missing = grads(&m);
    missing.remove(&m.vars[2]);
    assert!(matches!(
        opt.sam_perturb(&missing),
        Err(Error::MissingGradient { var: 2 })
    ));
    // A "gradient" that is another variable would be read while that variable is written.
    let mut aliased = grads(&m);
    aliased.insert(&m.vars[3], m.vars[3].as_tensor().clone());
    assert!(matches!(
        opt.sam_perturb(&aliased),
        Err(Error::Aliased { grad_of: 3, var: 3 })
    ));
    assert_eq!(m.values(), before);
    assert!(!opt.is_perturbed());
    // A step without the perturbation is refused; restore without one too.
    assert!(matches!(
        opt.try_step(&g),
        Err(Error::Core(ire_core::Error::Protocol(_)))
    ));
    assert!(matches!(
        opt.sam_restore(),
        Err(Error::Core(ire_core::Error::Protocol(_)))
    ));
    opt.sam_perturb(&g).unwrap();
    // A step must have every gradient too (it restores θ tensor by tensor).
    assert!(matches!(
        opt.try_step(&missing),
        Err(Error::MissingGradient { var: 2 })
    ));
    opt.try_step(&g).unwrap();
    assert!(!opt.is_perturbed());
}
