//! A small MLP on the shipped digits, written with burn's own layers, for the adapter tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::any::Any;

use burn::backend::ndarray::NdArrayTensor;
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use ire_adapter_testkit::{Digits, load_digits, uniform_init};

pub type B = Autodiff<NdArray>;

/// 64 → hidden → 10 with ReLU.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub l1: Linear<B>,
    pub l2: Linear<B>,
}

fn linear<B: Backend>(seed: u64, inputs: usize, outputs: usize, device: &B::Device) -> Linear<B> {
    let bound = 1.0 / (inputs as f32).sqrt();
    let w = uniform_init(seed, inputs * outputs, bound);
    let b = uniform_init(seed + 1, outputs, bound);
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(w, [inputs, outputs]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [outputs]),
            device,
        ))),
    }
}

impl<B: Backend> Mlp<B> {
    pub fn new(seed: u64, hidden: usize) -> Self {
        let device = Default::default();
        Mlp {
            l1: linear(seed * 10, 64, hidden, &device),
            l2: linear(seed * 10 + 5, hidden, 10, &device),
        }
    }

    pub fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.l2.forward(relu(self.l1.forward(x)))
    }

    /// Every parameter's values in visiting order (w1, b1, w2, b2), flattened.
    pub fn values(&self) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for l in [&self.l1, &self.l2] {
            out.push(l.weight.val().into_data().into_vec::<f32>().unwrap());
            out.push(
                l.bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap(),
            );
        }
        out
    }
}

impl Mlp<B> {
    /// Loss and gradients on a batch.
    pub fn loss_grads(&self, x: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> (f32, GradientsParams) {
        let logits = self.logits(x);
        let loss = CrossEntropyLossConfig::new()
            .init(&Default::default())
            .forward(logits, y);
        let l = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), self);
        (l, grads)
    }

    /// The address of each parameter's memory on the ndarray backend.
    pub fn addresses(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for l in [&self.l1, &self.l2] {
            out.push(address(l.weight.val().inner().into_primitive()));
            out.push(address(
                l.bias.as_ref().unwrap().val().inner().into_primitive(),
            ));
        }
        out
    }
}

fn address(p: TensorPrimitive<NdArray>) -> usize {
    let TensorPrimitive::Float(t) = p else {
        panic!("float expected")
    };
    let nd = (&t as &dyn Any).downcast_ref::<NdArrayTensor>().unwrap();
    match nd {
        NdArrayTensor::F32(s) => s.view().as_ptr() as usize,
        _ => panic!("f32 expected"),
    }
}

/// Mini-batches of the digits in a fixed order.
pub struct Batches {
    data: Digits,
    size: usize,
}

impl Batches {
    pub fn new(size: usize) -> Self {
        Batches {
            data: load_digits().unwrap(),
            size,
        }
    }

    pub fn get<B: Backend>(&self, step: usize) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let per_epoch = 1536 / self.size;
        let start = (step % per_epoch) * self.size;
        let (x, y) = self.data.batch(start, self.size);
        let device = Default::default();
        let n = y.len();
        let x = Tensor::from_data(TensorData::new(x.to_vec(), [n, 64]), &device);
        let y: Vec<i64> = y.iter().map(|&l| l as i64).collect();
        let y = Tensor::from_data(TensorData::new(y, [n]), &device);
        (x, y)
    }
}
