//! Trains a small candle MLP (64 → 128 → 10, ReLU) on the 8×8 digits shipped in `data/` with
//! AdmIRE, and prints the loss of each epoch, the flat fraction and the test accuracy.
//!
//! `cargo run --release -p ire-candle --example candle_digits`

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, Optimizer};
use ire_adapter_testkit::{SplitMix64, load_digits, uniform_init};
use ire_candle::AdmIre;
use ire_candle::Params;
use ire_candle::estimator::{LabelSampler, estimator_gradient};
use ire_core::{AdamWConfig, IreConfig};

fn linear(seed: u64, inputs: usize, outputs: usize) -> candle_core::Result<(Linear, Vec<Var>)> {
    let bound = 1.0 / (inputs as f32).sqrt();
    let w = Var::from_vec(
        uniform_init(seed, inputs * outputs, bound),
        (outputs, inputs),
        &Device::Cpu,
    )?;
    let b = Var::from_vec(
        uniform_init(seed + 1, outputs, bound),
        outputs,
        &Device::Cpu,
    )?;
    let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    Ok((layer, vec![w, b]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = load_digits()?;
    let (train, test) = (1500, data.len() - 1500);
    let (l1, mut vars) = linear(1, 64, 128)?;
    let (l2, v2) = linear(3, 128, 10)?;
    vars.extend(v2);
    let forward =
        |x: &Tensor| -> candle_core::Result<Tensor> { l2.forward(&l1.forward(x)?.relu()?) };

    let ire = IreConfig {
        kappa: 2.0,
        gamma: 0.8,
        refresh_every: 10,
        ..IreConfig::default()
    };
    let mut opt = AdmIre::<f32>::new(vars, Params::new(3e-3, AdamWConfig::default(), ire))?;
    let sampler = LabelSampler::new(42);
    let batch = 64;
    let mut rng = SplitMix64::new(7);
    let mut step = 0u64;
    for epoch in 0..20 {
        let order = rng.permutation(train);
        let mut total = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(batch) {
            let mut x = Vec::with_capacity(chunk.len() * 64);
            let mut y = Vec::with_capacity(chunk.len());
            for &i in chunk {
                x.extend_from_slice(&data.features[i * 64..(i + 1) * 64]);
                y.push(data.labels[i]);
            }
            let x = Tensor::from_vec(x, (chunk.len(), 64), &Device::Cpu)?;
            let y = Tensor::from_vec(y, chunk.len(), &Device::Cpu)?;
            let logits = forward(&x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let grads = loss.backward()?;
            if opt.refresh_due() {
                // One more backward, at labels sampled from the model's own softmax.
                opt.refresh(&estimator_gradient(&logits, &sampler, step)?)?;
            }
            opt.step(&grads)?;
            total += loss.to_scalar::<f32>()?;
            batches += 1;
            step += 1;
        }
        println!(
            "epoch {epoch:2}  loss {:.4}  flat {:.3}",
            total / batches as f32,
            opt.flat_fraction()?
        );
    }
    let (x, y) = data.batch(train, test);
    let x = Tensor::from_slice(x, (test, 64), &Device::Cpu)?;
    let predicted = forward(&x)?
        .argmax(1)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    let correct = predicted.iter().zip(y).filter(|(p, y)| p == y).count();
    println!(
        "test accuracy {:.2} % ({correct}/{test})",
        100.0 * correct as f64 / test as f64
    );
    Ok(())
}
