//! One optimizer step on a 10M-parameter model (ten 1000 × 1000 variables): candle's own AdamW,
//! the adapter's AdmIRE (and AdamW through the adapter), and `ire-core` alone on buffers it
//! owns, fed the same gradients.
//!
//! `cargo bench -p ire-candle --bench candle_step`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use criterion::{Criterion, criterion_group, criterion_main};
use ire_adapter_testkit::uniform_init;
use ire_backend_cpu::{CpuBackend, CpuBuffer};
use ire_candle::{AdmIre, Params};
use ire_core::optim::{EstimateInput, Estimator};
use ire_core::{AdamW, AdamWConfig, Backend, Ire, IreConfig, IreStep, Optimizer as _};

const TENSORS: usize = 10;
const SIDE: usize = 1000;

fn model(seed: u64) -> Vec<Var> {
    (0..TENSORS)
        .map(|i| {
            let v = uniform_init(seed + i as u64, SIDE * SIDE, 0.03);
            Var::from_vec(v, (SIDE, SIDE), &Device::Cpu).unwrap()
        })
        .collect()
}

/// Gradients of `Σ_i Σ w_i ⊙ r_i`: `r_i`, fresh contiguous tensors, as backward leaves them.
fn gradients(vars: &[Var]) -> GradStore {
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let r = Tensor::from_vec(
            uniform_init(100 + i as u64, SIDE * SIDE, 1.0),
            (SIDE, SIDE),
            &Device::Cpu,
        )
        .unwrap();
        loss = (loss + (v.as_tensor() * r).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn admire() -> IreConfig {
    IreConfig {
        kappa: 2.0,
        gamma: 0.8,
        refresh_every: 10,
        ..IreConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("step_10M");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    let lr = 1e-4;

    let vars = model(1);
    let grads = gradients(&vars);
    let mut theirs = candle_nn::AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr,
            ..ParamsAdamW::default()
        },
    )
    .unwrap();
    g.bench_function("candle_adamw", |b| {
        b.iter(|| theirs.step(black_box(&grads)).unwrap())
    });
    drop(theirs);

    let mut ours = AdmIre::<f32>::new(
        vars.clone(),
        Params::new(lr, AdamWConfig::default(), admire()),
    )
    .unwrap();
    g.bench_function("adapter_admire", |b| {
        b.iter(|| {
            if ours.refresh_due() {
                // The estimator gradient's cost is the model's; here the gradients stand in.
                ours.refresh(&grads).unwrap();
            }
            ours.step(black_box(&grads)).unwrap()
        })
    });
    drop(ours);

    let off = IreConfig {
        kappa: 0.0,
        estimator: Estimator::Manual,
        ..IreConfig::default()
    };
    let mut plain =
        AdmIre::<f32>::new(vars.clone(), Params::new(lr, AdamWConfig::default(), off)).unwrap();
    g.bench_function("adapter_adamw", |b| {
        b.iter(|| plain.step(black_box(&grads)).unwrap())
    });
    drop(plain);

    // ire-core alone: the same step on buffers the backend owns, no framework around it.
    let be = CpuBackend::new();
    let mut params: Vec<CpuBuffer<f32>> = vars
        .iter()
        .map(|v| CpuBuffer::from_vec(v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    let gbufs: Vec<CpuBuffer<f32>> = vars
        .iter()
        .map(|v| {
            CpuBuffer::from_vec(
                grads
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect();
    let mut core = Ire::new(
        AdamW::<CpuBackend, f32>::new(AdamWConfig::default()).unwrap(),
        admire(),
    )
    .unwrap();
    g.bench_function("ire_core_admire", |b| {
        b.iter(|| {
            let estimate = core
                .refresh_due()
                .then_some(EstimateInput::Gradient(&gbufs));
            core.step(
                &be,
                &mut params,
                black_box(&gbufs),
                IreStep { lr, estimate },
            )
            .unwrap()
        })
    });
    let mut adamw = AdamW::<CpuBackend, f32>::new(AdamWConfig::default()).unwrap();
    g.bench_function("ire_core_adamw", |b| {
        b.iter(|| adamw.step(&be, &mut params, black_box(&gbufs), lr).unwrap())
    });
    assert_eq!(be.len(&params[0]), SIDE * SIDE);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
