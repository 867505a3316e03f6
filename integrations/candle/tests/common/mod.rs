//! A small MLP on the shipped digits, written with candle's own layers, for the adapter tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Linear;
use ire_adapter_testkit::{Digits, load_digits, uniform_init};

/// 64 → hidden → 10 with ReLU, initialized from a seed (PyTorch's default bounds).
pub struct Mlp {
    pub vars: Vec<Var>,
    l1: Linear,
    l2: Linear,
}

impl Mlp {
    pub fn new(seed: u64, hidden: usize) -> Self {
        Self::with_dtype(seed, hidden, DType::F32)
    }

    pub fn with_dtype(seed: u64, hidden: usize, dtype: DType) -> Self {
        let shapes = [(hidden, 64), (hidden, 1), (10, hidden), (10, 1)];
        let fan_in = [64usize, 64, hidden, hidden];
        let vars: Vec<Var> = shapes
            .iter()
            .zip(fan_in)
            .enumerate()
            .map(|(i, (&(o, n), f))| {
                let bound = 1.0 / (f as f32).sqrt();
                let v = uniform_init(seed * 10 + i as u64, o * n, bound);
                let t = Tensor::from_vec(v, (o, n), &Device::Cpu).unwrap();
                let t = if n == 1 { t.reshape(o).unwrap() } else { t };
                Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
            })
            .collect();
        let l1 = Linear::new(
            vars[0].as_tensor().clone(),
            Some(vars[1].as_tensor().clone()),
        );
        let l2 = Linear::new(
            vars[2].as_tensor().clone(),
            Some(vars[3].as_tensor().clone()),
        );
        Mlp { vars, l1, l2 }
    }

    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.l2
            .forward(&self.l1.forward(x).unwrap().relu().unwrap())
            .unwrap()
    }

    /// Loss, gradients and the logits (for the estimator) on batch `b`.
    pub fn loss_grads(&self, x: &Tensor, y: &Tensor) -> (f32, GradStore, Tensor) {
        let logits = self.logits(x);
        let loss = candle_nn::loss::cross_entropy(&logits, y).unwrap();
        let grads = loss.backward().unwrap();
        let l = loss
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (l, grads, logits)
    }

    /// Every variable's values, widened to f64 (exact for f32 and f64 variables).
    pub fn values_f64(&self) -> Vec<Vec<f64>> {
        self.vars
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            })
            .collect()
    }

    /// Every variable's values (as f32).
    pub fn values(&self) -> Vec<Vec<f32>> {
        self.vars
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    /// Sets every variable (a copy of another model's values).
    pub fn set_values(&self, values: &[Vec<f32>]) {
        for (v, x) in self.vars.iter().zip(values) {
            let t = Tensor::from_vec(x.clone(), v.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(v.dtype())
                .unwrap();
            v.set(&t).unwrap();
        }
    }

    /// The address of each variable's storage.
    pub fn addresses(&self) -> Vec<usize> {
        self.vars
            .iter()
            .map(|v| {
                let (s, l) = v.as_tensor().storage_and_layout();
                match &*s {
                    candle_core::Storage::Cpu(c) => {
                        let base = match c {
                            candle_core::CpuStorage::F32(x) => x.as_ptr() as usize,
                            candle_core::CpuStorage::F64(x) => x.as_ptr() as usize,
                            _ => panic!("float storage expected"),
                        };
                        base + l.start_offset()
                    }
                    _ => panic!("CPU storage expected"),
                }
            })
            .collect()
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

    /// Batch `step` (cycling through the first 1,536 images), as f32 inputs and u32 labels.
    pub fn get(&self, step: usize, dtype: DType) -> (Tensor, Tensor) {
        let per_epoch = 1536 / self.size;
        let start = (step % per_epoch) * self.size;
        let (x, y) = self.data.batch(start, self.size);
        let x = Tensor::from_slice(x, (y.len(), 64), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let y = Tensor::from_slice(y, y.len(), &Device::Cpu).unwrap();
        (x, y)
    }
}
