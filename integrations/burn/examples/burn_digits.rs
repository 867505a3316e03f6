//! Trains a small burn MLP (64 → 128 → 10, ReLU) on the 8×8 digits shipped in `data/` with
//! AdmIRE on the ndarray backend, and prints the loss of each epoch, the flat fraction, how the
//! parameters' memory was reached, and the test accuracy.
//!
//! `cargo run --release -p ire-burn --example burn_digits`

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ire_adapter_testkit::{SplitMix64, load_digits, uniform_init};
use ire_burn::AdmIre;
use ire_burn::estimator::{LabelSampler, estimator_gradient};
use ire_core::{AdamWConfig, IreConfig};

type B = Autodiff<NdArray>;

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    l1: Linear<B>,
    l2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.l2.forward(relu(self.l1.forward(x)))
    }
}

fn linear<B: Backend>(seed: u64, inputs: usize, outputs: usize) -> Linear<B> {
    let bound = 1.0 / (inputs as f32).sqrt();
    let device = Default::default();
    let w = TensorData::new(
        uniform_init(seed, inputs * outputs, bound),
        [inputs, outputs],
    );
    let b = TensorData::new(uniform_init(seed + 1, outputs, bound), [outputs]);
    Linear {
        weight: Param::from_tensor(Tensor::from_data(w, &device)),
        bias: Some(Param::from_tensor(Tensor::from_data(b, &device))),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = load_digits()?;
    let (train, test) = (1500, data.len() - 1500);
    let device = Default::default();
    let mut model = Mlp::<B> {
        l1: linear(1, 64, 128),
        l2: linear(3, 128, 10),
    };
    let ire = IreConfig {
        kappa: 2.0,
        gamma: 0.8,
        refresh_every: 10,
        ..IreConfig::default()
    };
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire)?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let sampler = LabelSampler::new(42);
    let mut rng = SplitMix64::new(7);
    let mut step = 0u64;
    for epoch in 0..20 {
        let order = rng.permutation(train);
        let (mut total, mut batches) = (0.0, 0);
        for chunk in order.chunks(64) {
            let mut x = Vec::with_capacity(chunk.len() * 64);
            let mut y = Vec::with_capacity(chunk.len());
            for &i in chunk {
                x.extend_from_slice(&data.features[i * 64..(i + 1) * 64]);
                y.push(data.labels[i] as i64);
            }
            let x = Tensor::<B, 2>::from_data(TensorData::new(x, [chunk.len(), 64]), &device);
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [chunk.len()]), &device);
            if opt.refresh_due() {
                // One more forward and backward, at labels sampled from the model's softmax.
                let logits = model.forward(x.clone());
                opt.refresh(&model, estimator_gradient(logits, &model, &sampler, step)?)?;
            }
            let loss = loss_fn.forward(model.forward(x), y);
            total += loss.clone().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(3e-3, model, grads);
            if let Some(e) = opt.take_error() {
                return Err(e.into());
            }
            batches += 1;
            step += 1;
        }
        println!(
            "epoch {epoch:2}  loss {:.4}  flat {:.3}",
            total / batches as f32,
            opt.flat_fraction()?
        );
    }
    println!("memory: {:?}", opt.access_counts());
    let (x, y) = data.batch(train, test);
    let x = Tensor::<NdArray, 2>::from_data(TensorData::new(x.to_vec(), [test, 64]), &device);
    let predicted = model
        .valid()
        .forward(x)
        .argmax(1)
        .into_data()
        .into_vec::<i64>()?;
    let correct = predicted
        .iter()
        .zip(y)
        .filter(|(p, y)| **p == **y as i64)
        .count();
    println!(
        "test accuracy {:.2} % ({correct}/{test})",
        100.0 * correct as f64 / test as f64
    );
    Ok(())
}
