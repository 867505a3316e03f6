//! CIFAR ResNets (post-activation basic blocks, He et al. 2016) and pre-activation
//! WideResNets (Zagoruyko & Komodakis 2016), as in the official IRE CIFAR code: a 1×1
//! convolution (followed by batch norm in the post-activation blocks) on the shortcut whenever
//! the width or resolution changes.

use ire_core::{Backend, Result, Scalar};

use super::model::Model;
use crate::nn::layers::{Act, BatchNorm2d, Conv2d, Layout, Linear};
use crate::nn::{BnMode, BnShape, NnOps};

/// Depth and width of a ResNet or WideResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Total depth (`6n + 2` for ResNets, `6n + 4` for WRNs).
    pub depth: usize,
    /// Channels of the first stage (ResNet) or widening factor `k` (WRN: stages 16k, 32k, 64k).
    pub width: usize,
    /// Pre-activation WideResNet blocks.
    pub preact: bool,
}

impl ResNetConfig {
    /// CIFAR ResNet-`depth` with `base` channels in the first stage (16 in the paper).
    pub fn resnet(depth: usize, base: usize) -> Self {
        ResNetConfig {
            depth,
            width: base,
            preact: false,
        }
    }
    /// WRN-`depth`-`k`.
    pub fn wrn(depth: usize, k: usize) -> Self {
        ResNetConfig {
            depth,
            width: k,
            preact: true,
        }
    }
    /// Blocks per stage.
    pub fn blocks_per_stage(&self) -> usize {
        if self.preact {
            self.depth.saturating_sub(4) / 6
        } else {
            self.depth.saturating_sub(2) / 6
        }
    }
    /// Stem channels and the three stage widths.
    pub fn widths(&self) -> (usize, [usize; 3]) {
        if self.preact {
            (16, [16 * self.width, 32 * self.width, 64 * self.width])
        } else {
            (self.width, [self.width, 2 * self.width, 4 * self.width])
        }
    }
    /// Preset name.
    pub fn name(&self) -> String {
        match (self.preact, self.depth, self.width) {
            (false, 8, 8) => "resnet-small".into(),
            (true, 10, 1) => "wrn-small".into(),
            (false, d, 16) => format!("resnet{d}"),
            (false, d, w) => format!("resnet{d}-w{w}"),
            (true, d, k) => format!("wrn-{d}-{k}"),
        }
    }
}

struct Block<B: Backend, T: Scalar> {
    preact: bool,
    conv1: Conv2d,
    bn1: BatchNorm2d<B, T>,
    conv2: Conv2d,
    bn2: BatchNorm2d<B, T>,
    proj: Option<(Conv2d, Option<BatchNorm2d<B, T>>)>,
    out_per: usize,
    /// Forward activations, in order (see `forward`).
    a: [Act<B, T>; 5],
    sc: Act<B, T>,
    scb: Act<B, T>,
    out: Act<B, T>,
}

/// Shared backward scratch: every buffer holds the largest activation of the network.
struct Scratch<B: Backend, T: Scalar> {
    s: [Act<B, T>; 3],
}

impl<B: NnOps, T: Scalar> Block<B, T> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        b: &B,
        layout: &mut Layout,
        name: &str,
        preact: bool,
        c_in: usize,
        c_out: usize,
        stride: usize,
        hw: usize,
    ) -> Result<(Self, usize)> {
        let conv1 = Conv2d::new(
            layout,
            &format!("{name}.conv1"),
            c_in,
            c_out,
            3,
            stride,
            1,
            (hw, hw),
        );
        let ohw = conv1.geom.oh();
        let in_per = c_in * hw * hw;
        let out_per = c_out * ohw * ohw;
        let (bn1, bn1_per) = if preact {
            (
                BatchNorm2d::new(b, layout, &format!("{name}.bn1"), c_in, hw * hw, 1.0)?,
                in_per,
            )
        } else {
            (
                BatchNorm2d::new(b, layout, &format!("{name}.bn1"), c_out, ohw * ohw, 1.0)?,
                out_per,
            )
        };
        let conv2 = Conv2d::new(
            layout,
            &format!("{name}.conv2"),
            c_out,
            c_out,
            3,
            1,
            1,
            (ohw, ohw),
        );
        let bn2 = BatchNorm2d::new(b, layout, &format!("{name}.bn2"), c_out, ohw * ohw, 1.0)?;
        let proj = if c_in != c_out || stride != 1 {
            let conv = Conv2d::new(
                layout,
                &format!("{name}.shortcut.conv"),
                c_in,
                c_out,
                1,
                stride,
                0,
                (hw, hw),
            );
            let bn = if preact {
                None
            } else {
                Some(BatchNorm2d::new(
                    b,
                    layout,
                    &format!("{name}.shortcut.bn"),
                    c_out,
                    ohw * ohw,
                    1.0,
                )?)
            };
            Some((conv, bn))
        } else {
            None
        };
        // Post-activation: a = [conv1, bn1, relu, conv2, bn2(+shortcut)].
        // Pre-activation:  a = [bn1, relu, conv1, bn2, relu]; out = conv2 (+shortcut).
        let pers = if preact {
            [bn1_per, bn1_per, out_per, out_per, out_per]
        } else {
            [out_per; 5]
        };
        let a = [
            Act::new(b, pers[0])?,
            Act::new(b, pers[1])?,
            Act::new(b, pers[2])?,
            Act::new(b, pers[3])?,
            Act::new(b, pers[4])?,
        ];
        Ok((
            Block {
                preact,
                conv1,
                bn1,
                conv2,
                bn2,
                proj,
                out_per,
                a,
                sc: Act::new(b, out_per)?,
                scb: Act::new(b, out_per)?,
                out: Act::new(b, out_per)?,
            },
            ohw,
        ))
    }

    fn forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        mode: BnMode,
    ) -> Result<()> {
        for a in self.a.iter_mut() {
            a.ensure(b, n)?;
        }
        self.out.ensure(b, n)?;
        let [a0, a1, a2, a3, a4] = &mut self.a;
        if self.preact {
            self.bn1.forward(b, p, x, n, &mut a0.buf, mode)?;
            b.relu(&a0.buf, &mut a1.buf, n * a0.per)?;
            self.conv1.forward(b, p, &a1.buf, n, &mut a2.buf)?;
            self.bn2.forward(b, p, &a2.buf, n, &mut a3.buf, mode)?;
            b.relu(&a3.buf, &mut a4.buf, n * self.out_per)?;
            self.conv2.forward(b, p, &a4.buf, n, &mut self.out.buf)?;
            match &self.proj {
                Some((conv, _)) => {
                    self.sc.ensure(b, n)?;
                    conv.forward(b, p, x, n, &mut self.sc.buf)?;
                    b.axpy(&mut self.out.buf, T::one(), &self.sc.buf)?;
                }
                None => b.axpy(&mut self.out.buf, T::one(), x)?,
            }
        } else {
            self.conv1.forward(b, p, x, n, &mut a0.buf)?;
            self.bn1.forward(b, p, &a0.buf, n, &mut a1.buf, mode)?;
            b.relu(&a1.buf, &mut a2.buf, n * self.out_per)?;
            self.conv2.forward(b, p, &a2.buf, n, &mut a3.buf)?;
            self.bn2.forward(b, p, &a3.buf, n, &mut a4.buf, mode)?;
            match &mut self.proj {
                Some((conv, Some(bn))) => {
                    self.sc.ensure(b, n)?;
                    self.scb.ensure(b, n)?;
                    conv.forward(b, p, x, n, &mut self.sc.buf)?;
                    bn.forward(b, p, &self.sc.buf, n, &mut self.scb.buf, mode)?;
                    b.axpy(&mut a4.buf, T::one(), &self.scb.buf)?;
                }
                _ => b.axpy(&mut a4.buf, T::one(), x)?,
            }
            b.relu(&a4.buf, &mut self.out.buf, n * self.out_per)?;
        }
        Ok(())
    }

    /// `dout` → `dx` (both model-level buffers), through the shared scratch.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        x: &B::Buffer<T>,
        dout: &B::Buffer<T>,
        dx: &mut B::Buffer<T>,
        sc: &mut Scratch<B, T>,
        n: usize,
    ) -> Result<()> {
        let [s0, s1, s2] = &mut sc.s;
        let [a0, a1, a2, a3, a4] = &self.a;
        if self.preact {
            self.conv2
                .backward(b, p, g, &a4.buf, dout, n, Some(&mut s0.buf))?;
            b.relu_backward(&a4.buf, &s0.buf, &mut s1.buf, n * self.out_per)?;
            self.bn2
                .backward(b, p, g, &a2.buf, &s1.buf, n, &mut s0.buf)?;
            self.conv1
                .backward(b, p, g, &a1.buf, &s0.buf, n, Some(&mut s1.buf))?;
            b.relu_backward(&a1.buf, &s1.buf, &mut s0.buf, n * a1.per)?;
            self.bn1.backward(b, p, g, x, &s0.buf, n, dx)?;
            match &self.proj {
                Some((conv, _)) => {
                    conv.backward(b, p, g, x, dout, n, Some(&mut s2.buf))?;
                    b.axpy(dx, T::one(), &s2.buf)?;
                }
                None => b.axpy(dx, T::one(), dout)?,
            }
        } else {
            b.relu_backward(&self.out.buf, dout, &mut s0.buf, n * self.out_per)?;
            self.bn2
                .backward(b, p, g, &a3.buf, &s0.buf, n, &mut s1.buf)?;
            self.conv2
                .backward(b, p, g, &a2.buf, &s1.buf, n, Some(&mut s2.buf))?;
            b.relu_backward(&a2.buf, &s2.buf, &mut s1.buf, n * self.out_per)?;
            self.bn1
                .backward(b, p, g, &a0.buf, &s1.buf, n, &mut s2.buf)?;
            self.conv1.backward(b, p, g, x, &s2.buf, n, Some(dx))?;
            match &self.proj {
                Some((conv, Some(bn))) => {
                    bn.backward(b, p, g, &self.sc.buf, &s0.buf, n, &mut s1.buf)?;
                    conv.backward(b, p, g, x, &s1.buf, n, Some(&mut s2.buf))?;
                    b.axpy(dx, T::one(), &s2.buf)?;
                }
                _ => b.axpy(dx, T::one(), &s0.buf)?,
            }
        }
        Ok(())
    }

    fn bns(&self) -> Vec<&BatchNorm2d<B, T>> {
        let mut v = vec![&self.bn1, &self.bn2];
        if let Some((_, Some(bn))) = &self.proj {
            v.push(bn);
        }
        v
    }

    fn bns_mut(&mut self) -> Vec<&mut BatchNorm2d<B, T>> {
        let mut v = vec![&mut self.bn1, &mut self.bn2];
        if let Some((_, Some(bn))) = &mut self.proj {
            v.push(bn);
        }
        v
    }
}

/// A CIFAR ResNet or a pre-activation WideResNet.
pub struct ResNet<B: Backend, T: Scalar> {
    name: String,
    cfg: ResNetConfig,
    layout: Layout,
    stem: Conv2d,
    stem_bn: Option<BatchNorm2d<B, T>>,
    head_bn: Option<BatchNorm2d<B, T>>,
    blocks: Vec<Block<B, T>>,
    fc: Linear,
    stem_out: Act<B, T>,
    stem_bn_out: Act<B, T>,
    stem_relu: Act<B, T>,
    head_bn_out: Act<B, T>,
    head_relu: Act<B, T>,
    pool: Act<B, T>,
    logits: Act<B, T>,
    g: [Act<B, T>; 2],
    scratch: Scratch<B, T>,
    feat: BnShape,
}

impl<B: NnOps, T: Scalar> ResNet<B, T> {
    /// Builds the network for `input = (C, H, W)` images (square) and `classes` outputs.
    pub fn new(
        b: &B,
        name: String,
        cfg: &ResNetConfig,
        input: (usize, usize, usize),
        classes: usize,
    ) -> Result<Self> {
        let n = cfg.blocks_per_stage();
        if n == 0 || input.1 != input.2 {
            return Err(ire_core::Error::InvalidHyperParameter {
                field: "depth",
                value: cfg.depth as f64,
                allowed: "6n+2 (ResNet) or 6n+4 (WRN) with n >= 1, on square images",
            });
        }
        let mut layout = Layout::default();
        let (c0, widths) = cfg.widths();
        let hw = input.1;
        let stem = Conv2d::new(&mut layout, "conv1", input.0, c0, 3, 1, 1, (hw, hw));
        let stem_bn = if cfg.preact {
            None
        } else {
            Some(BatchNorm2d::new(b, &mut layout, "bn1", c0, hw * hw, 1.0)?)
        };
        let mut blocks = Vec::new();
        let (mut c, mut h) = (c0, hw);
        let mut max_per = c0 * hw * hw;
        for (s, &w) in widths.iter().enumerate() {
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let (blk, oh) = Block::new(
                    b,
                    &mut layout,
                    &format!("layer{}.{i}", s + 1),
                    cfg.preact,
                    c,
                    w,
                    stride,
                    h,
                )?;
                max_per = max_per.max(blk.a.iter().map(|a| a.per).max().unwrap_or(0));
                blocks.push(blk);
                c = w;
                h = oh;
            }
        }
        let head_bn = if cfg.preact {
            Some(BatchNorm2d::new(b, &mut layout, "bn_final", c, h * h, 1.0)?)
        } else {
            None
        };
        let fc = Linear::new(&mut layout, "fc", c, classes, true);
        let feat_per = c * h * h;
        Ok(ResNet {
            name,
            cfg: *cfg,
            stem,
            stem_bn,
            head_bn,
            blocks,
            fc,
            stem_out: Act::new(b, c0 * hw * hw)?,
            stem_bn_out: Act::new(b, c0 * hw * hw)?,
            stem_relu: Act::new(b, c0 * hw * hw)?,
            head_bn_out: Act::new(b, feat_per)?,
            head_relu: Act::new(b, feat_per)?,
            pool: Act::new(b, c)?,
            logits: Act::new(b, classes)?,
            g: [Act::new(b, max_per)?, Act::new(b, max_per)?],
            scratch: Scratch {
                s: [
                    Act::new(b, max_per)?,
                    Act::new(b, max_per)?,
                    Act::new(b, max_per)?,
                ],
            },
            feat: BnShape { n: 0, c, hw: h * h },
            layout,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }
}

impl<B: NnOps, T: Scalar> Model<B, T> for ResNet<B, T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn num_classes(&self) -> usize {
        self.fc.out
    }

    fn forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        x: &B::Buffer<T>,
        n: usize,
        mode: BnMode,
    ) -> Result<()> {
        self.feat.n = n;
        self.stem_out.ensure(b, n)?;
        self.stem.forward(b, p, x, n, &mut self.stem_out.buf)?;
        if let Some(bn) = &mut self.stem_bn {
            self.stem_bn_out.ensure(b, n)?;
            self.stem_relu.ensure(b, n)?;
            bn.forward(b, p, &self.stem_out.buf, n, &mut self.stem_bn_out.buf, mode)?;
            b.relu(
                &self.stem_bn_out.buf,
                &mut self.stem_relu.buf,
                n * self.stem_relu.per,
            )?;
        }
        for i in 0..self.blocks.len() {
            let (done, rest) = self.blocks.split_at_mut(i);
            let input = match done.last() {
                Some(prev) => &prev.out.buf,
                None => {
                    if self.cfg.preact {
                        &self.stem_out.buf
                    } else {
                        &self.stem_relu.buf
                    }
                }
            };
            rest[0].forward(b, p, input, n, mode)?;
        }
        let last: &B::Buffer<T> = match self.blocks.last() {
            Some(blk) => &blk.out.buf,
            None if self.cfg.preact => &self.stem_out.buf,
            None => &self.stem_relu.buf,
        };
        let feat = match &mut self.head_bn {
            Some(bn) => {
                self.head_bn_out.ensure(b, n)?;
                self.head_relu.ensure(b, n)?;
                bn.forward(b, p, last, n, &mut self.head_bn_out.buf, mode)?;
                b.relu(
                    &self.head_bn_out.buf,
                    &mut self.head_relu.buf,
                    n * self.head_relu.per,
                )?;
                &self.head_relu.buf
            }
            None => last,
        };
        self.pool.ensure(b, n)?;
        b.global_avg_pool(feat, &mut self.pool.buf, self.feat)?;
        self.logits.ensure(b, n)?;
        self.fc
            .forward(b, p, &self.pool.buf, n, &mut self.logits.buf)
    }

    fn logits(&self) -> &B::Buffer<T> {
        &self.logits.buf
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
        for a in self.g.iter_mut().chain(self.scratch.s.iter_mut()) {
            a.ensure(b, n)?;
        }
        let shape = BnShape { n, ..self.feat };
        let [g0, g1] = &mut self.g;
        // Head: fc → pool → (bn + relu).
        self.fc.backward(
            b,
            p,
            g,
            &self.pool.buf,
            dlogits,
            n,
            Some(&mut self.scratch.s[0].buf),
        )?;
        b.global_avg_pool_backward(&self.scratch.s[0].buf, &mut g0.buf, shape)?;
        let last_out = self.blocks.last().map(|blk| &blk.out.buf);
        if let (Some(bn), Some(last)) = (&self.head_bn, last_out) {
            b.relu_backward(
                &self.head_relu.buf,
                &g0.buf,
                &mut g1.buf,
                n * self.head_relu.per,
            )?;
            bn.backward(b, p, g, last, &g1.buf, n, &mut g0.buf)?;
        }
        // Blocks, last to first, ping-ponging between g0 (dout) and g1 (dx).
        let stem_out = if self.cfg.preact {
            &self.stem_out.buf
        } else {
            &self.stem_relu.buf
        };
        for i in (0..self.blocks.len()).rev() {
            let input = if i == 0 {
                stem_out
            } else {
                &self.blocks[i - 1].out.buf
            };
            self.blocks[i].backward(b, p, g, input, &g0.buf, &mut g1.buf, &mut self.scratch, n)?;
            std::mem::swap(g0, g1);
        }
        // Stem: (relu + bn) → conv; the input gradient is not needed.
        if let Some(bn) = &self.stem_bn {
            b.relu_backward(
                &self.stem_relu.buf,
                &g0.buf,
                &mut g1.buf,
                n * self.stem_relu.per,
            )?;
            bn.backward(b, p, g, &self.stem_out.buf, &g1.buf, n, &mut g0.buf)?;
        }
        self.stem.backward(b, p, g, x, &g0.buf, n, None)
    }

    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm2d<B, T>> {
        let mut bns: Vec<&mut BatchNorm2d<B, T>> = Vec::new();
        if let Some(bn) = &mut self.stem_bn {
            bns.push(bn);
        }
        for blk in &mut self.blocks {
            bns.extend(blk.bns_mut());
        }
        if let Some(bn) = &mut self.head_bn {
            bns.push(bn);
        }
        bns
    }

    fn state(&self) -> Vec<(String, &B::Buffer<T>)> {
        let mut bns: Vec<&BatchNorm2d<B, T>> = self.stem_bn.iter().collect();
        for blk in &self.blocks {
            bns.extend(blk.bns());
        }
        bns.extend(self.head_bn.iter());
        let mut v = Vec::new();
        for bn in bns {
            let base = bn.gamma.name.trim_end_matches(".weight").to_string();
            v.push((format!("{base}.running_mean"), &bn.running_mean));
            v.push((format!("{base}.running_var"), &bn.running_var));
        }
        v
    }

    fn state_mut(&mut self) -> Vec<(String, &mut B::Buffer<T>)> {
        let mut v = Vec::new();
        for bn in self.batch_norms_mut() {
            let base = bn.gamma.name.trim_end_matches(".weight").to_string();
            v.push((format!("{base}.running_mean"), &mut bn.running_mean));
            v.push((format!("{base}.running_var"), &mut bn.running_var));
        }
        v
    }
}
