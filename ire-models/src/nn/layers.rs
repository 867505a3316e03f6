//! Layers with `forward` and a hand-written `backward`, over a flat parameter arena.
//!
//! A layer knows where its weights sit in the arena ([`Slot`]) and owns the buffers it must
//! keep between forward and backward (its output, batch statistics). Weight gradients
//! accumulate into the gradient arena at the same offsets; input gradients are written.

use ire_core::{Backend, GemmShape, Result, Scalar};

use std::rc::Rc;

use super::batch_norm::{BnMode, BnShape, BnState, BnSync};
use super::conv::ConvGeom;
use super::ops::NnOps;
use crate::rng::Rng;

/// A named tensor's place in the parameter arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Offset of its first element.
    pub off: usize,
    /// Shape (row-major).
    pub shape: Vec<usize>,
}

impl Slot {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for a tensor with no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a tensor is initialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element equal to this value.
    Const(f64),
    /// Normal with this standard deviation.
    Normal(f64),
    /// Uniform in `[−a, a]`.
    Uniform(f64),
}

/// The arena layout: every parameter tensor of a model, in order, with its initializer.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// The tensors.
    pub slots: Vec<Slot>,
    inits: Vec<Init>,
    /// Whether each tensor takes weight decay by default (false for norms, biases and
    /// embeddings); `ire train` steps the two kinds as parameter groups unless `decay_all`.
    pub decay: Vec<bool>,
    len: usize,
}

impl Layout {
    /// Reserves a tensor.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        init: Init,
        decay: bool,
    ) -> Slot {
        let s = Slot {
            name: name.into(),
            off: self.len,
            shape: shape.to_vec(),
        };
        self.len += s.len();
        self.slots.push(s.clone());
        self.inits.push(init);
        self.decay.push(decay);
        s
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the model has no parameter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Initial values of the whole arena, drawn in tensor order from `rng`.
    pub fn init<T: Scalar>(&self, rng: &mut Rng) -> Vec<T> {
        let mut v = Vec::with_capacity(self.len);
        for (s, init) in self.slots.iter().zip(&self.inits) {
            for _ in 0..s.len() {
                v.push(T::of(match *init {
                    Init::Const(c) => c,
                    Init::Normal(sd) => sd * rng.normal(),
                    Init::Uniform(a) => a * (2.0 * rng.uniform() - 1.0),
                }));
            }
        }
        v
    }
}

/// Kaiming-normal (fan-out, ReLU gain) for convolutions, as the usual CIFAR ResNet recipes.
pub fn kaiming_conv(c_out: usize, k: usize) -> Init {
    Init::Normal((2.0 / (c_out * k * k) as f64).sqrt())
}

/// A growable activation buffer sized for the largest batch seen so far.
pub struct Act<B: Backend, T: Scalar> {
    /// The buffer.
    pub buf: B::Buffer<T>,
    /// Values per example.
    pub per: usize,
}

impl<B: Backend, T: Scalar> Act<B, T> {
    /// An empty buffer of `per` values per example.
    pub fn new(b: &B, per: usize) -> Result<Self> {
        Ok(Act {
            buf: b.alloc(0)?,
            per,
        })
    }
    /// Makes room for `n` examples (reallocating only to grow).
    pub fn ensure(&mut self, b: &B, n: usize) -> Result<()> {
        if b.len(&self.buf) < n * self.per {
            self.buf = b.alloc(n * self.per)?;
        }
        Ok(())
    }
}

/// Fully connected layer `y = x Wᵀ + b`, `W` stored `out × in`.
pub struct Linear {
    /// Weight slot.
    pub w: Slot,
    /// Bias slot.
    pub b: Option<Slot>,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
}

impl Linear {
    /// Adds the layer's tensors to `layout` (PyTorch's default init: U(±1/√in)).
    pub fn new(layout: &mut Layout, name: &str, inp: usize, out: usize, bias: bool) -> Self {
        let a = 1.0 / (inp as f64).sqrt();
        let w = layout.add(
            format!("{name}.weight"),
            &[out, inp],
            Init::Uniform(a),
            true,
        );
        let b = bias.then(|| layout.add(format!("{name}.bias"), &[out], Init::Uniform(a), false));
        Linear { w, b, inp, out }
    }

    /// `y[n × out]`.
    pub fn forward<B: NnOps, T: Scalar>(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        y: &mut B::Buffer<T>,
    ) -> Result<()> {
        let g = GemmShape {
            trans_a: false,
            trans_b: true,
            m: n,
            n: self.out,
            k: self.inp,
        };
        b.gemm(g, T::one(), x, 0, p, self.w.off, T::zero(), y, 0)?;
        if let Some(bs) = &self.b {
            b.add_row_bias(y, n, self.out, p, bs.off)?;
        }
        Ok(())
    }

    /// `dW += dyᵀ x`, `db += Σ dy`, `dx = dy W` (when `dx` is given).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: NnOps, T: Scalar>(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        x: &B::Buffer<T>,
        dy: &B::Buffer<T>,
        n: usize,
        dx: Option<&mut B::Buffer<T>>,
    ) -> Result<()> {
        let gw = GemmShape {
            trans_a: true,
            trans_b: false,
            m: self.out,
            n: self.inp,
            k: n,
        };
        b.gemm(gw, T::one(), dy, 0, x, 0, T::one(), g, self.w.off)?;
        if let Some(bs) = &self.b {
            b.row_bias_grad(dy, n, self.out, g, bs.off)?;
        }
        if let Some(dx) = dx {
            let gx = GemmShape {
                trans_a: false,
                trans_b: false,
                m: n,
                n: self.inp,
                k: self.out,
            };
            b.gemm(gx, T::one(), dy, 0, p, self.w.off, T::zero(), dx, 0)?;
        }
        Ok(())
    }
}

/// 2-D convolution without bias (every conv of the paper's ResNets is followed by a norm).
pub struct Conv2d {
    /// Weight slot `C_out × C_in × k × k`.
    pub w: Slot,
    /// Geometry.
    pub geom: ConvGeom,
}

impl Conv2d {
    /// Adds the weight to `layout` with Kaiming-normal init.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        layout: &mut Layout,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        hw: (usize, usize),
    ) -> Self {
        let w = layout.add(
            format!("{name}.weight"),
            &[c_out, c_in, k, k],
            kaiming_conv(c_out, k),
            true,
        );
        Conv2d {
            w,
            geom: ConvGeom {
                c_in,
                h: hw.0,
                w: hw.1,
                c_out,
                k,
                stride,
                pad,
            },
        }
    }
    /// Output `(C, H, W)`.
    pub fn out_shape(&self) -> (usize, usize, usize) {
        (self.geom.c_out, self.geom.oh(), self.geom.ow())
    }
    /// Forward.
    pub fn forward<B: NnOps, T: Scalar>(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        y: &mut B::Buffer<T>,
    ) -> Result<()> {
        b.conv2d(x, n, &self.geom, p, self.w.off, y)
    }
    /// Backward.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: NnOps, T: Scalar>(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        x: &B::Buffer<T>,
        dy: &B::Buffer<T>,
        n: usize,
        dx: Option<&mut B::Buffer<T>>,
    ) -> Result<()> {
        b.conv2d_backward(x, n, &self.geom, p, self.w.off, dy, dx, g, self.w.off)
    }
}

/// Batch norm over channels (affine), with running statistics (momentum 0.1, ε 1e-5).
pub struct BatchNorm2d<B: Backend, T: Scalar> {
    /// γ slot.
    pub gamma: Slot,
    /// β slot.
    pub beta: Slot,
    /// Channels.
    pub c: usize,
    /// Values per channel per example.
    pub hw: usize,
    /// Running mean.
    pub running_mean: B::Buffer<T>,
    /// Running variance.
    pub running_var: B::Buffer<T>,
    save_mean: B::Buffer<T>,
    save_invstd: B::Buffer<T>,
    /// The group whose whole batch gives the training statistics while it is active (`None`:
    /// this process's examples).
    sync: Option<Rc<dyn BnSync>>,
}

/// PyTorch's batch-norm momentum.
pub const BN_MOMENTUM: f64 = 0.1;
/// PyTorch's batch-norm ε.
pub const BN_EPS: f64 = 1e-5;

impl<B: NnOps, T: Scalar> BatchNorm2d<B, T> {
    /// Adds γ (ones, or zeros for a zero-initialized residual branch) and β (zeros).
    pub fn new(
        b: &B,
        layout: &mut Layout,
        name: &str,
        c: usize,
        hw: usize,
        gamma_init: f64,
    ) -> Result<Self> {
        let gamma = layout.add(
            format!("{name}.weight"),
            &[c],
            Init::Const(gamma_init),
            false,
        );
        let beta = layout.add(format!("{name}.bias"), &[c], Init::Const(0.0), false);
        let mut running_var = b.alloc(c)?;
        b.fill(&mut running_var, T::one())?;
        Ok(BatchNorm2d {
            gamma,
            beta,
            c,
            hw,
            running_mean: b.alloc(c)?,
            running_var,
            save_mean: b.alloc(c)?,
            save_invstd: b.alloc(c)?,
            sync: None,
        })
    }

    /// Takes the training statistics over the whole batch of `sync`'s group while it is
    /// active (synchronized batch norm).
    pub fn set_sync(&mut self, sync: Rc<dyn BnSync>) {
        self.sync = Some(sync);
    }

    /// The group, while it is active.
    fn synced(&self) -> Option<&dyn BnSync> {
        self.sync.as_deref().filter(|s| s.active())
    }

    fn shape(&self, n: usize) -> BnShape {
        BnShape {
            n,
            c: self.c,
            hw: self.hw,
        }
    }

    /// Forward in `mode`.
    pub fn forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        y: &mut B::Buffer<T>,
        mode: BnMode,
    ) -> Result<()> {
        let shape = self.shape(n);
        let sync = self.sync.clone().filter(|s| s.active());
        let st = BnState {
            running_mean: &mut self.running_mean,
            running_var: &mut self.running_var,
            save_mean: &mut self.save_mean,
            save_invstd: &mut self.save_invstd,
        };
        if let (BnMode::Train { update_running }, Some(sync)) = (mode, &sync) {
            let offsets = (self.gamma.off, self.beta.off);
            let consts = (BN_MOMENTUM, BN_EPS);
            return b.batch_norm_synced(
                x,
                y,
                shape,
                p,
                offsets,
                st,
                update_running,
                consts,
                sync.as_ref(),
            );
        }
        b.batch_norm(
            x,
            y,
            shape,
            p,
            self.gamma.off,
            self.beta.off,
            st,
            mode,
            BN_MOMENTUM,
            BN_EPS,
        )
    }

    /// Backward of the last training-mode forward.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        x: &B::Buffer<T>,
        dy: &B::Buffer<T>,
        n: usize,
        dx: &mut B::Buffer<T>,
    ) -> Result<()> {
        if let Some(sync) = self.synced() {
            return b.batch_norm_backward_synced(
                x,
                dy,
                dx,
                self.shape(n),
                (p, self.gamma.off),
                (&self.save_mean, &self.save_invstd),
                (g, self.gamma.off, self.beta.off),
                sync,
            );
        }
        b.batch_norm_backward(
            x,
            dy,
            dx,
            self.shape(n),
            p,
            self.gamma.off,
            &self.save_mean,
            &self.save_invstd,
            g,
            self.gamma.off,
            self.beta.off,
        )
    }
}
