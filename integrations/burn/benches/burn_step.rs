//! One optimizer step on a 10M-parameter burn model (ten 1000 × 1000 parameters, ndarray
//! backend): burn's own AdamW, the adapter's AdmIRE in place and through the host round trip
//! (what a backend without host memory takes), and `ire-core` alone on buffers it owns.
//!
//! `cargo bench -p ire-burn --bench burn_step`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::RefCell;
use std::time::Duration;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ire_adapter_testkit::uniform_init;
use ire_backend_cpu::{CpuBackend, CpuBuffer};
use ire_burn::{AdmIre, MemoryAccess};
use ire_core::optim::EstimateInput;
use ire_core::{AdamW, AdamWConfig, Ire, IreConfig, IreStep};

type B = Autodiff<NdArray>;
const TENSORS: usize = 10;
const SIDE: usize = 1000;

#[derive(Module, Debug)]
struct Big<B: Backend> {
    w: Vec<Param<Tensor<B, 2>>>,
}

fn model() -> Big<B> {
    let device = Default::default();
    Big {
        w: (0..TENSORS)
            .map(|i| {
                let v = uniform_init(i as u64, SIDE * SIDE, 0.03);
                Param::from_tensor(Tensor::from_data(TensorData::new(v, [SIDE, SIDE]), &device))
            })
            .collect(),
    }
}

fn weights() -> Vec<Tensor<B, 2>> {
    let device = Default::default();
    (0..TENSORS)
        .map(|i| {
            let v = uniform_init(100 + i as u64, SIDE * SIDE, 1.0);
            Tensor::from_data(TensorData::new(v, [SIDE, SIDE]), &device)
        })
        .collect()
}

/// Gradients of `Σ_i Σ w_i ⊙ r_i` (`r_i`, as backward leaves them).
fn gradients(m: &Big<B>, r: &[Tensor<B, 2>]) -> GradientsParams {
    let mut loss = Tensor::<B, 1>::zeros([1], &Default::default());
    for (w, r) in m.w.iter().zip(r) {
        loss = loss + (w.val() * r.clone()).sum();
    }
    GradientsParams::from_grads(loss.backward(), m)
}

fn admire() -> IreConfig {
    IreConfig {
        kappa: 2.0,
        gamma: 0.8,
        refresh_every: 10,
        ..IreConfig::default()
    }
}

/// Benchmarks `opt.step` alone (the gradients are made outside the timing).
fn bench_optimizer<O: Optimizer<Big<B>, B>>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    opt: O,
    mut before: impl FnMut(&mut O, &Big<B>, &[Tensor<B, 2>]),
) {
    let r = weights();
    let m = RefCell::new(Some(model()));
    let opt = RefCell::new(opt);
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                let guard = m.borrow();
                let model = guard.as_ref().unwrap();
                before(&mut opt.borrow_mut(), model, &r);
                gradients(model, &r)
            },
            |grads| {
                let model = m.borrow_mut().take().unwrap();
                let model = opt.borrow_mut().step(1e-4, model, grads);
                *m.borrow_mut() = Some(model);
            },
            BatchSize::PerIteration,
        )
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("step_10M");
    g.sample_size(10).measurement_time(Duration::from_secs(6));

    let theirs = burn::optim::AdamWConfig::new().init::<B, Big<B>>();
    bench_optimizer(&mut g, "burn_adamw", theirs, |_, _, _| {});

    let refresh = |o: &mut AdmIre<B>, m: &Big<B>, r: &[Tensor<B, 2>]| {
        if o.refresh_due() {
            // The estimator gradient's cost is the model's; here the gradients stand in.
            o.refresh(m, gradients(m, r)).unwrap();
        }
    };
    let ours = AdmIre::<B>::adamw(AdamWConfig::default(), admire()).unwrap();
    bench_optimizer(&mut g, "adapter_admire", ours, refresh);

    let copied = AdmIre::<B>::adamw(AdamWConfig::default(), admire())
        .unwrap()
        .with_memory_access(MemoryAccess::HostCopy);
    bench_optimizer(&mut g, "adapter_admire_host_copy", copied, refresh);

    // ire-core alone on buffers the backend owns.
    let be = CpuBackend::new();
    let mut params: Vec<CpuBuffer<f32>> = (0..TENSORS)
        .map(|i| CpuBuffer::from_vec(uniform_init(i as u64, SIDE * SIDE, 0.03)))
        .collect();
    let grads: Vec<CpuBuffer<f32>> = (0..TENSORS)
        .map(|i| CpuBuffer::from_vec(uniform_init(100 + i as u64, SIDE * SIDE, 1.0)))
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
                .then_some(EstimateInput::Gradient(&grads));
            core.step(&be, &mut params, &grads, IreStep { lr: 1e-4, estimate })
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
