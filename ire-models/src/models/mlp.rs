//! A multi-layer perceptron on flattened images: Linear → ReLU → … → Linear.

use ire_core::{Backend, Result, Scalar};

use super::model::Model;
use crate::nn::layers::{Act, Layout, Linear};
use crate::nn::{BnMode, NnOps};

/// MLP with ReLU hidden layers.
pub struct Mlp<B: Backend, T: Scalar> {
    name: String,
    layout: Layout,
    layers: Vec<Linear>,
    /// `pre[i]` = output of linear `i`; `post[i]` = ReLU of it (hidden layers only).
    pre: Vec<Act<B, T>>,
    post: Vec<Act<B, T>>,
    grad_a: Act<B, T>,
    grad_b: Act<B, T>,
    n: usize,
}

impl<B: NnOps, T: Scalar> Mlp<B, T> {
    /// An MLP for inputs of shape `input`, hidden widths `hidden`, `classes` outputs.
    pub fn new(
        b: &B,
        name: String,
        input: (usize, usize, usize),
        hidden: &[usize],
        classes: usize,
    ) -> Result<Self> {
        let mut layout = Layout::default();
        let mut dims = vec![input.0 * input.1 * input.2];
        dims.extend_from_slice(hidden);
        dims.push(classes);
        let layers: Vec<Linear> = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&mut layout, &format!("fc{i}"), w[0], w[1], true))
            .collect();
        let widest = *dims.iter().max().unwrap_or(&1);
        Ok(Mlp {
            name,
            pre: dims[1..]
                .iter()
                .map(|&d| Act::new(b, d))
                .collect::<Result<_>>()?,
            post: hidden
                .iter()
                .map(|&d| Act::new(b, d))
                .collect::<Result<_>>()?,
            grad_a: Act::new(b, widest)?,
            grad_b: Act::new(b, widest)?,
            layout,
            layers,
            n: 0,
        })
    }
}

impl<B: NnOps, T: Scalar> Model<B, T> for Mlp<B, T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn num_classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out)
    }

    fn forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        _mode: BnMode,
    ) -> Result<()> {
        self.n = n;
        let last = self.layers.len() - 1;
        for i in 0..self.layers.len() {
            self.pre[i].ensure(b, n)?;
            let input = if i == 0 { x } else { &self.post[i - 1].buf };
            self.layers[i].forward(b, p, input, n, &mut self.pre[i].buf)?;
            if i < last {
                self.post[i].ensure(b, n)?;
                b.relu(
                    &self.pre[i].buf,
                    &mut self.post[i].buf,
                    n * self.layers[i].out,
                )?;
            }
        }
        Ok(())
    }

    fn logits(&self) -> &B::Buffer<T> {
        &self.pre[self.pre.len() - 1].buf
    }

    fn backward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        x: &B::Buffer<T>,
        dlogits: &B::Buffer<T>,
        n: usize,
    ) -> Result<()> {
        self.grad_a.ensure(b, n)?;
        self.grad_b.ensure(b, n)?;
        let last = self.layers.len() - 1;
        // grad_b holds the gradient w.r.t. the output of layer i (after its ReLU, if any).
        for i in (0..self.layers.len()).rev() {
            let dy: &B::Buffer<T> = if i == last { dlogits } else { &self.grad_b.buf };
            if i == 0 {
                return self.layers[0].backward(b, p, g, x, dy, n, None);
            }
            self.layers[i].backward(
                b,
                p,
                g,
                &self.post[i - 1].buf,
                dy,
                n,
                Some(&mut self.grad_a.buf),
            )?;
            b.relu_backward(
                &self.post[i - 1].buf,
                &self.grad_a.buf,
                &mut self.grad_b.buf,
                n * self.layers[i - 1].out,
            )?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, &B::Buffer<T>)> {
        Vec::new()
    }
    fn state_mut(&mut self) -> Vec<(String, &mut B::Buffer<T>)> {
        Vec::new()
    }
}
