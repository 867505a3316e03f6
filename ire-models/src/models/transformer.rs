//! Transformers over the [`NnOps`] trait: the paper's 2-layer decoder LM (post-LN, ReLU),
//! Llama (pre-RMSNorm, RoPE, SwiGLU, no biases) and ViT (pre-LN, GELU, patch embedding, CLS
//! token) share one block with its norm placement and feed-forward chosen by configuration.

use ire_core::{Backend, Result, Scalar};

use super::model::Model;
use crate::nn::host_tf::sinusoidal_table;
use crate::nn::layers::{Act, Init, Layout, Linear, Slot};
use crate::nn::{AttnShape, BnMode, NnOps, NormKind};

/// The feed-forward of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    /// `W2 relu(W1 x)`.
    Relu,
    /// `W2 gelu(W1 x)`.
    Gelu,
    /// `W2 (silu(W1 x) ⊙ W3 x)` (Llama).
    SwiGlu,
}

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positional {
    /// Learned table added to the embeddings.
    Learned,
    /// Fixed sinusoids added to the embeddings.
    Sinusoidal,
    /// The official small-scale code's quirk: its positional encoding expects sequence-first
    /// input but gets batch-first tensors, so sequence `b` of a batch gets the sinusoid of
    /// position `b` added to every token (no per-token position at all).
    SinusoidalBatchQuirk,
    /// Rotary embeddings of q and k in every attention (Llama).
    Rope,
}

/// A transformer's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Vocabulary (LM) — unused by ViT.
    pub vocab: usize,
    /// Width.
    pub d: usize,
    /// Heads.
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Context length (tokens, or patches + 1 for ViT).
    pub ctx: usize,
    /// Feed-forward kind.
    pub act: Ffn,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// Pre-norm (Llama, ViT) or post-norm (the paper's 2-layer model).
    pub pre_norm: bool,
    /// Positional scheme.
    pub pos: Positional,
    /// Biases in the linear layers.
    pub bias: bool,
    /// Output layer shares the embedding matrix.
    pub tie: bool,
}

impl TransformerConfig {
    /// The paper's WikiText-2 model: d 128, 8 heads, FFN 512, ReLU, post-LN, 2 layers.
    pub fn paper_lm(vocab: usize, ctx: usize) -> Self {
        TransformerConfig {
            vocab,
            d: 128,
            heads: 8,
            layers: 2,
            ffn: 512,
            ctx,
            act: Ffn::Relu,
            norm: NormKind::Layer,
            pre_norm: false,
            pos: Positional::Sinusoidal,
            bias: true,
            tie: false,
        }
    }

    /// Llama: pre-RMSNorm, RoPE, SwiGLU, no biases, untied output.
    pub fn llama(
        vocab: usize,
        d: usize,
        heads: usize,
        layers: usize,
        ffn: usize,
        ctx: usize,
    ) -> Self {
        TransformerConfig {
            vocab,
            d,
            heads,
            layers,
            ffn,
            ctx,
            act: Ffn::SwiGlu,
            norm: NormKind::Rms,
            pre_norm: true,
            pos: Positional::Rope,
            bias: false,
            tie: false,
        }
    }

    /// A GPT-style pre-LN model (learned positions, GELU, tied embeddings).
    pub fn gpt(vocab: usize, d: usize, heads: usize, layers: usize, ctx: usize) -> Self {
        TransformerConfig {
            vocab,
            d,
            heads,
            layers,
            ffn: 4 * d,
            ctx,
            act: Ffn::Gelu,
            norm: NormKind::Layer,
            pre_norm: true,
            pos: Positional::Learned,
            bias: true,
            tie: true,
        }
    }
}

struct Norm {
    g: Slot,
    b: Option<Slot>,
}

impl Norm {
    fn new(layout: &mut Layout, name: &str, d: usize, kind: NormKind) -> Self {
        let g = layout.add(format!("{name}.weight"), &[d], Init::Const(1.0), false);
        let b = (kind == NormKind::Layer)
            .then(|| layout.add(format!("{name}.bias"), &[d], Init::Const(0.0), false));
        Norm { g, b }
    }
}

struct Block<B: Backend, T: Scalar> {
    n1: Norm,
    n2: Norm,
    qkv: Linear,
    proj: Linear,
    w1: Linear,
    w2: Linear,
    // Forward buffers (rows × width).
    h: Act<B, T>,
    m1: Act<B, T>,
    s1: Act<B, T>,
    q: Act<B, T>,
    /// Log-sum-exp of each attention row (`heads × t` per sequence): all the backward needs
    /// besides `q` and `att` to recompute the probabilities.
    lse: Act<B, T>,
    att: Act<B, T>,
    o: Act<B, T>,
    x1: Act<B, T>,
    h2: Act<B, T>,
    m2: Act<B, T>,
    s2: Act<B, T>,
    f1: Act<B, T>,
    a: Act<B, T>,
    f2: Act<B, T>,
    out: Act<B, T>,
}

/// Backward scratch shared by the blocks.
struct Scratch<B: Backend, T: Scalar> {
    d: [Act<B, T>; 3],
    wide: [Act<B, T>; 2],
    qkv: Act<B, T>,
}

/// A transformer over token ids (LM: logits per position) or image patches (ViT: logits of
/// the CLS token).
pub struct Transformer<B: Backend, T: Scalar> {
    name: String,
    cfg: TransformerConfig,
    layout: Layout,
    causal: bool,
    /// ViT: (channels, image side, patch side, classes).
    vit: Option<(usize, usize, usize, usize)>,
    embed: Option<Slot>,
    patch: Option<Linear>,
    cls: Option<Slot>,
    pos: Option<Slot>,
    fixed_pos: Option<B::Buffer<T>>,
    blocks: Vec<Block<B, T>>,
    final_norm: Option<Norm>,
    head: Option<Linear>,
    // Buffers.
    x0: Act<B, T>,
    patches: Act<B, T>,
    fm: Act<B, T>,
    fs: Act<B, T>,
    fin: Act<B, T>,
    cls_rows: Act<B, T>,
    /// A one-element buffer holding 1: the left factor of the row copies of the CLS token.
    ones: B::Buffer<T>,
    logits: Act<B, T>,
    g: [Act<B, T>; 2],
    scratch: Scratch<B, T>,
    n: usize,
}

impl<B: NnOps, T: Scalar> Block<B, T> {
    fn new(b: &B, layout: &mut Layout, name: &str, c: &TransformerConfig) -> Result<Self> {
        let d = c.d;
        let n1 = Norm::new(layout, &format!("{name}.norm1"), d, c.norm);
        let qkv = Linear::new(layout, &format!("{name}.attn.qkv"), d, 3 * d, c.bias);
        let proj = Linear::new(layout, &format!("{name}.attn.proj"), d, d, c.bias);
        let n2 = Norm::new(layout, &format!("{name}.norm2"), d, c.norm);
        let f1w = if c.act == Ffn::SwiGlu {
            2 * c.ffn
        } else {
            c.ffn
        };
        let w1 = Linear::new(layout, &format!("{name}.mlp.fc1"), d, f1w, c.bias);
        let w2 = Linear::new(layout, &format!("{name}.mlp.fc2"), c.ffn, d, c.bias);
        let t = c.ctx;
        Ok(Block {
            n1,
            n2,
            qkv,
            proj,
            w1,
            w2,
            h: Act::new(b, t * d)?,
            m1: Act::new(b, t)?,
            s1: Act::new(b, t)?,
            q: Act::new(b, t * 3 * d)?,
            lse: Act::new(b, c.heads * t)?,
            att: Act::new(b, t * d)?,
            o: Act::new(b, t * d)?,
            x1: Act::new(b, t * d)?,
            h2: Act::new(b, t * d)?,
            m2: Act::new(b, t)?,
            s2: Act::new(b, t)?,
            f1: Act::new(b, t * f1w)?,
            a: Act::new(b, t * c.ffn)?,
            f2: Act::new(b, t * d)?,
            out: Act::new(b, t * d)?,
        })
    }

    fn acts(&mut self) -> [&mut Act<B, T>; 15] {
        [
            &mut self.h,
            &mut self.m1,
            &mut self.s1,
            &mut self.q,
            &mut self.lse,
            &mut self.att,
            &mut self.o,
            &mut self.x1,
            &mut self.h2,
            &mut self.m2,
            &mut self.s2,
            &mut self.f1,
            &mut self.a,
            &mut self.f2,
            &mut self.out,
        ]
    }

    fn ffn_forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        c: &TransformerConfig,
        input: &B::Buffer<T>,
        rows: usize,
    ) -> Result<()> {
        self.w1.forward(b, p, input, rows, &mut self.f1.buf)?;
        match c.act {
            Ffn::Relu => b.relu(&self.f1.buf, &mut self.a.buf, rows * c.ffn)?,
            Ffn::Gelu => b.gelu(&self.f1.buf, &mut self.a.buf, rows * c.ffn)?,
            Ffn::SwiGlu => b.swiglu(&self.f1.buf, &mut self.a.buf, rows, c.ffn)?,
        }
        self.w2.forward(b, p, &self.a.buf, rows, &mut self.f2.buf)
    }

    fn attn_forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        c: &TransformerConfig,
        s: AttnShape,
        input: &B::Buffer<T>,
    ) -> Result<()> {
        let rows = s.b * s.t;
        self.qkv.forward(b, p, input, rows, &mut self.q.buf)?;
        if c.pos == Positional::Rope {
            b.rope(&mut self.q.buf, s, ROPE_BASE, false)?;
        }
        b.attention(&self.q.buf, s, &mut self.lse.buf, &mut self.att.buf)?;
        self.proj
            .forward(b, p, &self.att.buf, rows, &mut self.o.buf)
    }

    fn forward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        c: &TransformerConfig,
        s: AttnShape,
        x: &B::Buffer<T>,
    ) -> Result<()> {
        let rows = s.b * s.t;
        for a in self.acts() {
            a.ensure(b, s.b)?;
        }
        let d = c.d;
        if c.pre_norm {
            b.norm_rows(
                c.norm,
                x,
                &mut self.h.buf,
                rows,
                d,
                p,
                self.n1.g.off,
                self.n1.b.as_ref().map(|s| s.off),
                &mut self.m1.buf,
                &mut self.s1.buf,
                NORM_EPS,
            )?;
            let h = std::mem::replace(&mut self.h.buf, b.alloc(0)?);
            let r = self.attn_forward(b, p, c, s, &h);
            self.h.buf = h;
            r?;
            b.copy(x, &mut self.x1.buf)?;
            b.axpy(&mut self.x1.buf, T::one(), &self.o.buf)?;
            b.norm_rows(
                c.norm,
                &self.x1.buf,
                &mut self.h2.buf,
                rows,
                d,
                p,
                self.n2.g.off,
                self.n2.b.as_ref().map(|s| s.off),
                &mut self.m2.buf,
                &mut self.s2.buf,
                NORM_EPS,
            )?;
            let h2 = std::mem::replace(&mut self.h2.buf, b.alloc(0)?);
            let r = self.ffn_forward(b, p, c, &h2, rows);
            self.h2.buf = h2;
            r?;
            b.copy(&self.x1.buf, &mut self.out.buf)?;
            b.axpy(&mut self.out.buf, T::one(), &self.f2.buf)
        } else {
            // Post-norm: h = x + attn(x) (pre-norm sum), x1 = norm1(h); h2 = x1 + ffn(x1), out = norm2(h2).
            self.attn_forward(b, p, c, s, x)?;
            b.copy(x, &mut self.h.buf)?;
            b.axpy(&mut self.h.buf, T::one(), &self.o.buf)?;
            b.norm_rows(
                c.norm,
                &self.h.buf,
                &mut self.x1.buf,
                rows,
                d,
                p,
                self.n1.g.off,
                self.n1.b.as_ref().map(|s| s.off),
                &mut self.m1.buf,
                &mut self.s1.buf,
                NORM_EPS,
            )?;
            let x1 = std::mem::replace(&mut self.x1.buf, b.alloc(0)?);
            let r = self.ffn_forward(b, p, c, &x1, rows);
            self.x1.buf = x1;
            r?;
            b.copy(&self.x1.buf, &mut self.h2.buf)?;
            b.axpy(&mut self.h2.buf, T::one(), &self.f2.buf)?;
            b.norm_rows(
                c.norm,
                &self.h2.buf,
                &mut self.out.buf,
                rows,
                d,
                p,
                self.n2.g.off,
                self.n2.b.as_ref().map(|s| s.off),
                &mut self.m2.buf,
                &mut self.s2.buf,
                NORM_EPS,
            )
        }
    }

    /// Backward of the feed-forward: `dinput = ∂/∂(its input)` from `dout`.
    #[allow(clippy::too_many_arguments)]
    fn ffn_backward(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        c: &TransformerConfig,
        input: &B::Buffer<T>,
        dout: &B::Buffer<T>,
        rows: usize,
        sc: &mut Scratch<B, T>,
        dinput: &mut B::Buffer<T>,
    ) -> Result<()> {
        let [w0, w1] = &mut sc.wide;
        self.w2
            .backward(b, p, g, &self.a.buf, dout, rows, Some(&mut w0.buf))?;
        match c.act {
            Ffn::Relu => b.relu_backward(&self.a.buf, &w0.buf, &mut w1.buf, rows * c.ffn)?,
            Ffn::Gelu => b.gelu_backward(&self.f1.buf, &w0.buf, &mut w1.buf, rows * c.ffn)?,
            Ffn::SwiGlu => b.swiglu_backward(&self.f1.buf, &w0.buf, &mut w1.buf, rows, c.ffn)?,
        }
        self.w1
            .backward(b, p, g, input, &w1.buf, rows, Some(dinput))
    }

    #[allow(clippy::too_many_arguments)]
    fn attn_backward(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        c: &TransformerConfig,
        s: AttnShape,
        input: &B::Buffer<T>,
        dout: &B::Buffer<T>,
        sc: &mut Scratch<B, T>,
        dinput: &mut B::Buffer<T>,
    ) -> Result<()> {
        let rows = s.b * s.t;
        let [d0, _, _] = &mut sc.d;
        self.proj
            .backward(b, p, g, &self.att.buf, dout, rows, Some(&mut d0.buf))?;
        b.attention_backward(
            &self.q.buf,
            &self.att.buf,
            &self.lse.buf,
            &d0.buf,
            s,
            &mut sc.qkv.buf,
        )?;
        if c.pos == Positional::Rope {
            b.rope(&mut sc.qkv.buf, s, ROPE_BASE, true)?;
        }
        self.qkv
            .backward(b, p, g, input, &sc.qkv.buf, rows, Some(dinput))
    }

    /// `dout` → `dx` (model-level buffers).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        c: &TransformerConfig,
        s: AttnShape,
        x: &B::Buffer<T>,
        dout: &B::Buffer<T>,
        dx: &mut B::Buffer<T>,
        sc: &mut Scratch<B, T>,
    ) -> Result<()> {
        let rows = s.b * s.t;
        let d = c.d;
        let (nb1, nb2) = (
            self.n1.b.as_ref().map(|s| s.off),
            self.n2.b.as_ref().map(|s| s.off),
        );
        if c.pre_norm {
            // out = x1 + ffn(norm2(x1)); x1 = x + attn(norm1(x)).
            let mut dh2 = std::mem::replace(&mut sc.d[1].buf, b.alloc(0)?);
            let mut dx1 = std::mem::replace(&mut sc.d[2].buf, b.alloc(0)?);
            let r = (|| {
                self.ffn_backward(b, p, g, c, &self.h2.buf, dout, rows, sc, &mut dh2)?;
                b.norm_rows_backward(
                    c.norm,
                    &self.x1.buf,
                    &dh2,
                    &mut dx1,
                    rows,
                    d,
                    p,
                    self.n2.g.off,
                    &self.m2.buf,
                    &self.s2.buf,
                    g,
                    self.n2.g.off,
                    nb2,
                )?;
                b.axpy(&mut dx1, T::one(), dout)?;
                self.attn_backward(b, p, g, c, s, &self.h.buf, &dx1, sc, &mut dh2)?;
                b.norm_rows_backward(
                    c.norm,
                    x,
                    &dh2,
                    dx,
                    rows,
                    d,
                    p,
                    self.n1.g.off,
                    &self.m1.buf,
                    &self.s1.buf,
                    g,
                    self.n1.g.off,
                    nb1,
                )?;
                b.axpy(dx, T::one(), &dx1)
            })();
            sc.d[1].buf = dh2;
            sc.d[2].buf = dx1;
            r
        } else {
            let mut dh2 = std::mem::replace(&mut sc.d[1].buf, b.alloc(0)?);
            let mut dx1 = std::mem::replace(&mut sc.d[2].buf, b.alloc(0)?);
            let r = (|| {
                b.norm_rows_backward(
                    c.norm,
                    &self.h2.buf,
                    dout,
                    &mut dh2,
                    rows,
                    d,
                    p,
                    self.n2.g.off,
                    &self.m2.buf,
                    &self.s2.buf,
                    g,
                    self.n2.g.off,
                    nb2,
                )?;
                self.ffn_backward(b, p, g, c, &self.x1.buf, &dh2, rows, sc, &mut dx1)?;
                b.axpy(&mut dx1, T::one(), &dh2)?;
                b.norm_rows_backward(
                    c.norm,
                    &self.h.buf,
                    &dx1,
                    &mut dh2,
                    rows,
                    d,
                    p,
                    self.n1.g.off,
                    &self.m1.buf,
                    &self.s1.buf,
                    g,
                    self.n1.g.off,
                    nb1,
                )?;
                self.attn_backward(b, p, g, c, s, x, &dh2, sc, dx)?;
                b.axpy(dx, T::one(), &dh2)
            })();
            sc.d[1].buf = dh2;
            sc.d[2].buf = dx1;
            r
        }
    }
}

/// RoPE base (Llama's 10000).
pub const ROPE_BASE: f64 = 10000.0;
/// Norm ε.
pub const NORM_EPS: f64 = 1e-5;

impl<B: NnOps, T: Scalar> Transformer<B, T> {
    /// A language model over `cfg.vocab` tokens with context `cfg.ctx`, causal attention.
    pub fn lm(b: &B, name: String, cfg: TransformerConfig) -> Result<Self> {
        Self::build(b, name, cfg, None)
    }

    /// A ViT over `(channels, side, side)` images cut into `patch × patch` patches, with a CLS
    /// token and learned positions; `cfg.ctx` is set to patches + 1.
    pub fn vit(
        b: &B,
        name: String,
        mut cfg: TransformerConfig,
        image: (usize, usize),
        patch: usize,
        classes: usize,
    ) -> Result<Self> {
        let (ch, side) = image;
        if patch == 0 || side % patch != 0 {
            return Err(ire_core::Error::InvalidHyperParameter {
                field: "patch",
                value: patch as f64,
                allowed: "a divisor of the image side",
            });
        }
        cfg.ctx = (side / patch) * (side / patch) + 1;
        Self::build(b, name, cfg, Some((ch, side, patch, classes)))
    }

    fn build(
        b: &B,
        name: String,
        cfg: TransformerConfig,
        vit: Option<(usize, usize, usize, usize)>,
    ) -> Result<Self> {
        if cfg.heads == 0
            || !cfg.d.is_multiple_of(cfg.heads)
            || (cfg.pos == Positional::Rope && !(cfg.d / cfg.heads).is_multiple_of(2))
        {
            return Err(ire_core::Error::InvalidHyperParameter {
                field: "heads",
                value: cfg.heads as f64,
                allowed: "a divisor of d (with an even head size for RoPE)",
            });
        }
        let mut layout = Layout::default();
        let d = cfg.d;
        let t = cfg.ctx;
        let (embed, patch, cls) = match vit {
            None => (
                // Embeddings take no weight decay by default, like norms and biases (nanoGPT
                // decays its 2-D ones; `decay_all` does too).
                Some(layout.add("embed.weight", &[cfg.vocab, d], Init::Normal(0.02), false)),
                None,
                None,
            ),
            Some((ch, _, ps, _)) => (
                None,
                Some(Linear::new(
                    &mut layout,
                    "patch_embed",
                    ch * ps * ps,
                    d,
                    true,
                )),
                Some(layout.add("cls_token", &[d], Init::Normal(0.02), false)),
            ),
        };
        let pos = (cfg.pos == Positional::Learned || vit.is_some())
            .then(|| layout.add("pos_embed", &[t, d], Init::Normal(0.02), false));
        let fixed_pos = match cfg.pos {
            Positional::Sinusoidal if vit.is_none() => {
                let tab: Vec<T> = sinusoidal_table(t, d).into_iter().map(T::of).collect();
                Some(b.alloc_from(&tab)?)
            }
            _ => None,
        };
        let blocks = (0..cfg.layers)
            .map(|i| Block::new(b, &mut layout, &format!("blocks.{i}"), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = cfg
            .pre_norm
            .then(|| Norm::new(&mut layout, "norm_final", d, cfg.norm));
        let (head, classes) = match vit {
            Some((.., k)) => (Some(Linear::new(&mut layout, "head", d, k, true)), k),
            None if cfg.tie => (None, cfg.vocab),
            None => (
                Some(Linear::new(&mut layout, "lm_head", d, cfg.vocab, cfg.bias)),
                cfg.vocab,
            ),
        };
        let f1w = if cfg.act == Ffn::SwiGlu {
            2 * cfg.ffn
        } else {
            cfg.ffn
        };
        let wide = f1w.max(cfg.ffn) * t;
        let out_per = if vit.is_some() { classes } else { t * classes };
        Ok(Transformer {
            name,
            causal: vit.is_none(),
            vit,
            embed,
            patch,
            cls,
            pos,
            fixed_pos,
            blocks,
            final_norm,
            head,
            x0: Act::new(b, t * d)?,
            patches: Act::new(b, t * vit.map_or(0, |(ch, _, ps, _)| ch * ps * ps))?,
            fm: Act::new(b, t)?,
            fs: Act::new(b, t)?,
            fin: Act::new(b, t * d)?,
            cls_rows: Act::new(b, d)?,
            ones: b.alloc_from(&[T::one()])?,
            logits: Act::new(b, out_per)?,
            g: [Act::new(b, t * d)?, Act::new(b, t * d)?],
            scratch: Scratch {
                d: [
                    Act::new(b, t * d)?,
                    Act::new(b, t * d)?,
                    Act::new(b, t * d)?,
                ],
                wide: [Act::new(b, wide)?, Act::new(b, wide)?],
                qkv: Act::new(b, t * 3 * d)?,
            },
            layout,
            cfg,
            n: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    fn shape(&self, n: usize) -> AttnShape {
        AttnShape {
            b: n,
            t: self.cfg.ctx,
            h: self.cfg.heads,
            dh: self.cfg.d / self.cfg.heads,
            causal: self.causal,
        }
    }

    /// Rows of logits per example: `ctx` for an LM, 1 for ViT.
    pub fn rows_per_example(&self) -> usize {
        if self.vit.is_some() { 1 } else { self.cfg.ctx }
    }

    /// Patch extraction for ViT on the backend: `n × C × S × S` images → `n × t × (C·p·p)`
    /// rows, row 0 of each image left zero for the CLS token.
    fn patchify(&self, b: &B, x: &B::Buffer<T>, n: usize, out: &mut B::Buffer<T>) -> Result<()> {
        let Some((ch, side, ps, _)) = self.vit else {
            return Ok(());
        };
        b.patchify(x, n, ch, side, ps, out)
    }
}

impl<B: NnOps, T: Scalar> Model<B, T> for Transformer<B, T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn layout(&self) -> &Layout {
        &self.layout
    }
    fn num_classes(&self) -> usize {
        self.vit.map_or(self.cfg.vocab, |v| v.3)
    }
    fn token_vocab(&self) -> Option<usize> {
        self.vit.is_none().then_some(self.cfg.vocab)
    }
    fn rows_per_example(&self) -> usize {
        Transformer::rows_per_example(self)
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
        let s = self.shape(n);
        let (t, d) = (self.cfg.ctx, self.cfg.d);
        let rows = n * t;
        for a in [
            &mut self.x0,
            &mut self.fin,
            &mut self.fm,
            &mut self.fs,
            &mut self.logits,
            &mut self.patches,
            &mut self.cls_rows,
        ] {
            a.ensure(b, n)?;
        }
        match (&self.embed, &self.patch) {
            (Some(e), _) => b.embedding(x, rows, p, e.off, self.cfg.vocab, d, &mut self.x0.buf)?,
            (None, Some(pl)) => {
                let mut pb = std::mem::replace(&mut self.patches.buf, b.alloc(0)?);
                let done = self.patchify(b, x, n, &mut pb);
                self.patches.buf = pb;
                done?;
                pl.forward(b, p, &self.patches.buf, rows, &mut self.x0.buf)?;
                if let Some(c) = &self.cls {
                    // Row 0 of each image is the CLS token: the patch layer saw zeros there,
                    // so the row is the patch bias plus the token.
                    for i in 0..n {
                        copy_row(
                            b,
                            &self.ones,
                            p,
                            c.off,
                            &mut self.x0.buf,
                            i * t * d,
                            d,
                            true,
                        )?;
                    }
                }
            }
            _ => {}
        }
        if let Some(ps) = &self.pos {
            b.add_positions(&mut self.x0.buf, n, t, d, p, ps.off)?;
        }
        match self.cfg.pos {
            Positional::Sinusoidal => {
                if let Some(fp) = &self.fixed_pos {
                    b.add_positions(&mut self.x0.buf, n, t, d, fp, 0)?;
                }
            }
            Positional::SinusoidalBatchQuirk => {
                let tab = sinusoidal_table(n, d);
                let mut expanded = vec![T::zero(); rows * d];
                for i in 0..n {
                    for k in 0..t {
                        for j in 0..d {
                            expanded[(i * t + k) * d + j] = T::of(tab[i * d + j]);
                        }
                    }
                }
                let e = b.alloc_from(&expanded)?;
                b.add_positions(&mut self.x0.buf, 1, rows, d, &e, 0)?;
            }
            _ => {}
        }
        for i in 0..self.blocks.len() {
            let (done, rest) = self.blocks.split_at_mut(i);
            let input = done.last().map_or(&self.x0.buf, |blk| &blk.out.buf);
            rest[0].forward(b, p, &self.cfg, s, input)?;
        }
        let last = self.blocks.last().map_or(&self.x0.buf, |blk| &blk.out.buf);
        let feat = match &self.final_norm {
            Some(nm) => {
                b.norm_rows(
                    self.cfg.norm,
                    last,
                    &mut self.fin.buf,
                    rows,
                    d,
                    p,
                    nm.g.off,
                    nm.b.as_ref().map(|s| s.off),
                    &mut self.fm.buf,
                    &mut self.fs.buf,
                    NORM_EPS,
                )?;
                &self.fin.buf
            }
            None => last,
        };
        match (self.vit, &self.head, &self.embed) {
            (Some(_), Some(h), _) => {
                for i in 0..n {
                    copy_row(
                        b,
                        &self.ones,
                        feat,
                        i * t * d,
                        &mut self.cls_rows.buf,
                        i * d,
                        d,
                        false,
                    )?;
                }
                h.forward(b, p, &self.cls_rows.buf, n, &mut self.logits.buf)
            }
            (None, Some(h), _) => h.forward(b, p, feat, rows, &mut self.logits.buf),
            (None, None, Some(e)) => {
                let g = ire_core::GemmShape {
                    trans_a: false,
                    trans_b: true,
                    m: rows,
                    n: self.cfg.vocab,
                    k: d,
                };
                b.gemm(
                    g,
                    T::one(),
                    feat,
                    0,
                    p,
                    e.off,
                    T::zero(),
                    &mut self.logits.buf,
                    0,
                )
            }
            _ => Ok(()),
        }
    }

    fn logits(&self) -> &B::Buffer<T> {
        &self.logits.buf
    }

    fn backward(
        &mut self,
        b: &B,
        p: &B::Buffer<T>,
        g: &mut B::Buffer<T>,
        _x: &B::Buffer<T>,
        dlogits: &B::Buffer<T>,
        n: usize,
    ) -> Result<()> {
        let s = self.shape(n);
        let (t, d) = (self.cfg.ctx, self.cfg.d);
        let rows = n * t;
        for a in self
            .g
            .iter_mut()
            .chain(self.scratch.d.iter_mut())
            .chain(self.scratch.wide.iter_mut())
        {
            a.ensure(b, n)?;
        }
        self.scratch.qkv.ensure(b, n)?;
        let last = self.blocks.last().map_or(&self.x0.buf, |blk| &blk.out.buf);
        let feat = if self.final_norm.is_some() {
            &self.fin.buf
        } else {
            last
        };
        let [g0, g1] = &mut self.g;
        // Head → dfeat in g0.
        match (self.vit, &self.head, &self.embed) {
            (Some(_), Some(h), _) => {
                let mut dcls = b.alloc::<T>(n * d)?;
                h.backward(b, p, g, &self.cls_rows.buf, dlogits, n, Some(&mut dcls))?;
                // Only the CLS rows receive a gradient from the head.
                b.fill(&mut g0.buf, T::zero())?;
                for i in 0..n {
                    copy_row(
                        b,
                        &self.ones,
                        &dcls,
                        i * d,
                        &mut g0.buf,
                        i * t * d,
                        d,
                        false,
                    )?;
                }
            }
            (None, Some(h), _) => h.backward(b, p, g, feat, dlogits, rows, Some(&mut g0.buf))?,
            (None, None, Some(e)) => {
                let gw = ire_core::GemmShape {
                    trans_a: true,
                    trans_b: false,
                    m: self.cfg.vocab,
                    n: d,
                    k: rows,
                };
                b.gemm(gw, T::one(), dlogits, 0, feat, 0, T::one(), g, e.off)?;
                let gx = ire_core::GemmShape {
                    trans_a: false,
                    trans_b: false,
                    m: rows,
                    n: d,
                    k: self.cfg.vocab,
                };
                b.gemm(
                    gx,
                    T::one(),
                    dlogits,
                    0,
                    p,
                    e.off,
                    T::zero(),
                    &mut g0.buf,
                    0,
                )?;
            }
            _ => {}
        }
        if let Some(nm) = &self.final_norm {
            b.norm_rows_backward(
                self.cfg.norm,
                last,
                &g0.buf,
                &mut g1.buf,
                rows,
                d,
                p,
                nm.g.off,
                &self.fm.buf,
                &self.fs.buf,
                g,
                nm.g.off,
                nm.b.as_ref().map(|s| s.off),
            )?;
            std::mem::swap(g0, g1);
        }
        for i in (0..self.blocks.len()).rev() {
            let input = if i == 0 {
                &self.x0.buf
            } else {
                &self.blocks[i - 1].out.buf
            };
            self.blocks[i].backward(
                b,
                p,
                g,
                &self.cfg,
                s,
                input,
                &g0.buf,
                &mut g1.buf,
                &mut self.scratch,
            )?;
            std::mem::swap(g0, g1);
        }
        // g0 = ∂/∂x0.
        if let Some(ps) = &self.pos {
            b.add_positions_backward(&g0.buf, n, t, d, g, ps.off)?;
        }
        match (&self.embed, &self.patch) {
            (Some(e), _) => b.embedding_backward(_x, rows, &g0.buf, d, self.cfg.vocab, g, e.off),
            (None, Some(pl)) => {
                if let Some(c) = &self.cls {
                    // ∂/∂cls = Σ_images ∂x0[image, 0].
                    for i in 0..n {
                        copy_row(b, &self.ones, &g0.buf, i * t * d, g, c.off, d, true)?;
                    }
                }
                pl.backward(b, p, g, &self.patches.buf, &g0.buf, rows, None)
            }
            _ => Ok(()),
        }
    }

    fn state(&self) -> Vec<(String, &B::Buffer<T>)> {
        Vec::new()
    }
    fn state_mut(&mut self) -> Vec<(String, &mut B::Buffer<T>)> {
        Vec::new()
    }
}

/// `dst[dst_off..+d] (+)= src[src_off..+d]` on the device, as the 1×d product `ones · src`
/// (the ops trait's GEMM), so no row goes through host memory.
#[allow(clippy::too_many_arguments)]
fn copy_row<B: NnOps, T: Scalar>(
    b: &B,
    ones: &B::Buffer<T>,
    src: &B::Buffer<T>,
    src_off: usize,
    dst: &mut B::Buffer<T>,
    dst_off: usize,
    d: usize,
    accumulate: bool,
) -> Result<()> {
    let g = ire_core::GemmShape {
        trans_a: false,
        trans_b: false,
        m: 1,
        n: d,
        k: 1,
    };
    let beta = if accumulate { T::one() } else { T::zero() };
    b.gemm(g, T::one(), ones, 0, src, src_off, beta, dst, dst_off)
}
