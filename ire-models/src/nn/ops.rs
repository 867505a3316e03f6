//! The neural-network operations traits ([`ConvNetOps`], [`TransformerOps`], [`LossOps`], and
//! [`NnOps`], all three), and the checks their implementations share. The host backends
//! implement them in `host_ops`, the device runtimes in `device`.
//!
//! Shapes are explicit arguments, so activation buffers can be allocated once for the largest
//! batch and used for smaller ones. Parameters and gradients live in ONE arena buffer each; an
//! op reads its weights at an element offset into the arena. Weight gradients ACCUMULATE (`+=`)
//! into the gradient arena; input gradients are written (`=`).

use ire_core::{Backend, Error, GemmShape, Reference, Result, Scalar};

use super::batch_norm::{BnMode, BnShape, BnState, BnSync};
use super::conv::ConvGeom;
use super::host_tf::{AttnShape, NormKind};

/// The operations of MLPs and convolutional networks over a backend's buffers (f32 or f64).
pub trait ConvNetOps: Backend {
    /// `C = α·op(A)·op(B) + β·C` on row-major matrices at element offsets.
    #[allow(clippy::too_many_arguments)]
    fn gemm<T: Scalar>(
        &self,
        g: GemmShape,
        alpha: T,
        a: &Self::Buffer<T>,
        a_off: usize,
        b: &Self::Buffer<T>,
        b_off: usize,
        beta: T,
        c: &mut Self::Buffer<T>,
        c_off: usize,
    ) -> Result<()>;

    /// `y[r, j] += bias[j]` for the first `rows × cols` values of `y`.
    fn add_row_bias<T: Scalar>(
        &self,
        y: &mut Self::Buffer<T>,
        rows: usize,
        cols: usize,
        bias: &Self::Buffer<T>,
        b_off: usize,
    ) -> Result<()>;

    /// `db[j] += Σ_r dy[r, j]`.
    fn row_bias_grad<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        rows: usize,
        cols: usize,
        db: &mut Self::Buffer<T>,
        db_off: usize,
    ) -> Result<()>;

    /// 2-D convolution without bias of `n` images: `y = conv(x, w)`.
    fn conv2d<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        w: &Self::Buffer<T>,
        w_off: usize,
        y: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// Backward of [`ConvNetOps::conv2d`]: `dw += ∂`, and `dx = ∂` when given.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        w: &Self::Buffer<T>,
        w_off: usize,
        dy: &Self::Buffer<T>,
        dx: Option<&mut Self::Buffer<T>>,
        dw: &mut Self::Buffer<T>,
        dw_off: usize,
    ) -> Result<()>;

    /// `y = max(x, 0)` on the first `len` values.
    fn relu<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()>;
    /// `dx = dy·[y > 0]`.
    fn relu_backward<T: Scalar>(
        &self,
        y: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()>;
    /// Exact GELU.
    fn gelu<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()>;
    /// Backward of GELU (from the input).
    fn gelu_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()>;

    /// Batch norm over `N × C × HW` with affine `γ, β` at `params[g_off..]`, `params[b_off..]`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        s: BnShape,
        params: &Self::Buffer<T>,
        g_off: usize,
        b_off: usize,
        st: BnState<'_, Self, T>,
        mode: BnMode,
        momentum: f64,
        eps: f64,
    ) -> Result<()>;

    /// Backward of a training-mode batch norm: `dx =`, `dγ +=`, `dβ +=`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        s: BnShape,
        params: &Self::Buffer<T>,
        g_off: usize,
        save_mean: &Self::Buffer<T>,
        save_invstd: &Self::Buffer<T>,
        grads: &mut Self::Buffer<T>,
        dg_off: usize,
        db_off: usize,
    ) -> Result<()>;

    /// Training-mode [`Self::batch_norm`] with the batch statistics of a data-parallel group's
    /// whole batch (`sync`, collective); the running statistics move (when `update_running`)
    /// with the group's statistics. The default runs the host implementation on copies of the
    /// buffers (on a device, the activations travel through the host); the host backends run
    /// it in place.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_synced<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        s: BnShape,
        params: &Self::Buffer<T>,
        offsets: (usize, usize),
        st: BnState<'_, Self, T>,
        update_running: bool,
        consts: (f64, f64),
        sync: &dyn BnSync,
    ) -> Result<()> {
        let r = Reference;
        let copy = |b: &Self::Buffer<T>| self.to_vec(b).and_then(|v| r.alloc_from(&v));
        let (hx, hp) = (copy(x)?, copy(params)?);
        let mut h = [
            copy(y)?,
            copy(st.running_mean)?,
            copy(st.running_var)?,
            copy(st.save_mean)?,
            copy(st.save_invstd)?,
        ];
        let [hy, rm, rv, sm, si] = &mut h;
        let hst = BnState {
            running_mean: rm,
            running_var: rv,
            save_mean: sm,
            save_invstd: si,
        };
        r.batch_norm_synced(&hx, hy, s, &hp, offsets, hst, update_running, consts, sync)?;
        let dst = [
            y,
            st.running_mean,
            st.running_var,
            st.save_mean,
            st.save_invstd,
        ];
        for (dst, src) in dst.into_iter().zip(&h) {
            self.upload(dst, &r.to_vec(src)?)?;
        }
        Ok(())
    }

    /// [`Self::batch_norm_backward`] after [`Self::batch_norm_synced`]: `dx` from the sums of
    /// the group's whole batch (`sync`, collective), `dγ, dβ +=` this process's own sums (the
    /// group's gradient reduction adds them up). The default runs the host implementation on
    /// copies of the buffers; the host backends run it in place.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_synced<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        s: BnShape,
        (params, g_off): (&Self::Buffer<T>, usize),
        (save_mean, save_invstd): (&Self::Buffer<T>, &Self::Buffer<T>),
        (grads, dg_off, db_off): (&mut Self::Buffer<T>, usize, usize),
        sync: &dyn BnSync,
    ) -> Result<()> {
        let r = Reference;
        let copy = |b: &Self::Buffer<T>| self.to_vec(b).and_then(|v| r.alloc_from(&v));
        let (hx, hdy, hp, hm, hi) = (
            copy(x)?,
            copy(dy)?,
            copy(params)?,
            copy(save_mean)?,
            copy(save_invstd)?,
        );
        let (mut hdx, mut hg) = (copy(dx)?, copy(grads)?);
        r.batch_norm_backward_synced(
            &hx,
            &hdy,
            &mut hdx,
            s,
            (&hp, g_off),
            (&hm, &hi),
            (&mut hg, dg_off, db_off),
            sync,
        )?;
        self.upload(dx, &r.to_vec(&hdx)?)?;
        self.upload(grads, &r.to_vec(&hg)?)
    }

    /// Mean over `HW`: `N × C × HW → N × C`.
    fn global_avg_pool<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        s: BnShape,
    ) -> Result<()>;
    /// Backward of the global mean: `dx = dy / HW` broadcast.
    fn global_avg_pool_backward<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        s: BnShape,
    ) -> Result<()>;

    /// Max pooling of `n` images (window `g.k`, `g.stride`, `g.pad`; `g.c_out` ignored).
    fn max_pool2d<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        y: &mut Self::Buffer<T>,
    ) -> Result<()>;
    /// Backward of max pooling: the gradient goes to the first maximum of each window.
    fn max_pool2d_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// `x ← s·x` on the whole buffer (gradient clipping).
    fn scale<T: Scalar>(&self, x: &mut Self::Buffer<T>, s: T) -> Result<()>;
}

/// The operations of transformers over a backend's buffers: row norms, attention, rotary
/// positions, SwiGLU, embeddings, positions and ViT patches.
pub trait TransformerOps: Backend {
    /// Row normalization (LayerNorm or RMSNorm) of `rows × d`, affine `γ` at `g_off` (and `β`
    /// at `b_off`); saves each row's mean and 1/std for the backward.
    #[allow(clippy::too_many_arguments)]
    fn norm_rows<T: Scalar>(
        &self,
        kind: NormKind,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        rows: usize,
        d: usize,
        params: &Self::Buffer<T>,
        g_off: usize,
        b_off: Option<usize>,
        mean: &mut Self::Buffer<T>,
        rstd: &mut Self::Buffer<T>,
        eps: f64,
    ) -> Result<()>;
    /// Backward of [`TransformerOps::norm_rows`]: `dx =`, `dγ +=`, `dβ +=`.
    #[allow(clippy::too_many_arguments)]
    fn norm_rows_backward<T: Scalar>(
        &self,
        kind: NormKind,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        rows: usize,
        d: usize,
        params: &Self::Buffer<T>,
        g_off: usize,
        mean: &Self::Buffer<T>,
        rstd: &Self::Buffer<T>,
        grads: &mut Self::Buffer<T>,
        dg_off: usize,
        db_off: Option<usize>,
    ) -> Result<()>;
    /// Multi-head attention over `qkv` rows `[q | k | v]`: `out = softmax(q kᵀ/√dh) v` (causal
    /// or not), computed in blocks of keys with an online softmax, so no `t × t` buffer exists;
    /// saves each row's log-sum-exp into `lse` (`b × h × t`, [`AttnShape::lse_len`]) for the
    /// backward.
    fn attention<T: Scalar>(
        &self,
        qkv: &Self::Buffer<T>,
        s: AttnShape,
        lse: &mut Self::Buffer<T>,
        out: &mut Self::Buffer<T>,
    ) -> Result<()>;
    /// Backward of attention from the forward's `out` and `lse`: `dqkv =`. The probabilities
    /// are recomputed block by block from `qkv` and `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<T: Scalar>(
        &self,
        qkv: &Self::Buffer<T>,
        out: &Self::Buffer<T>,
        lse: &Self::Buffer<T>,
        dout: &Self::Buffer<T>,
        s: AttnShape,
        dqkv: &mut Self::Buffer<T>,
    ) -> Result<()>;
    /// Rotary position embedding of the q and k parts of `qkv` in place (`inverse`: backward).
    fn rope<T: Scalar>(
        &self,
        qkv: &mut Self::Buffer<T>,
        s: AttnShape,
        base: f64,
        inverse: bool,
    ) -> Result<()>;
    /// SwiGLU: rows `[a | b]` of `2f` → `silu(a) ⊙ b` of `f`.
    fn swiglu<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        rows: usize,
        f: usize,
    ) -> Result<()>;
    /// Backward of SwiGLU: `dx =`.
    fn swiglu_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        rows: usize,
        f: usize,
    ) -> Result<()>;
    /// Embedding lookup: `y[i] = table[ids[i]]` (ids stored as floats), table `V × d` at `off`.
    #[allow(clippy::too_many_arguments)]
    fn embedding<T: Scalar>(
        &self,
        ids: &Self::Buffer<T>,
        n: usize,
        table: &Self::Buffer<T>,
        off: usize,
        vocab: usize,
        d: usize,
        y: &mut Self::Buffer<T>,
    ) -> Result<()>;
    /// Backward of the lookup: `dtable[ids[i]] += dy[i]`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_backward<T: Scalar>(
        &self,
        ids: &Self::Buffer<T>,
        n: usize,
        dy: &Self::Buffer<T>,
        d: usize,
        vocab: usize,
        dtable: &mut Self::Buffer<T>,
        off: usize,
    ) -> Result<()>;
    /// `x[b, t, :] += table[t, :]` (positional embeddings), table at `off`.
    #[allow(clippy::too_many_arguments)]
    fn add_positions<T: Scalar>(
        &self,
        x: &mut Self::Buffer<T>,
        b: usize,
        t: usize,
        d: usize,
        table: &Self::Buffer<T>,
        off: usize,
    ) -> Result<()>;
    /// Backward: `dtable[t, :] += Σ_b dy[b, t, :]`.
    #[allow(clippy::too_many_arguments)]
    fn add_positions_backward<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        b: usize,
        t: usize,
        d: usize,
        dtable: &mut Self::Buffer<T>,
        off: usize,
    ) -> Result<()>;
    /// ViT patch rows: `n × ch × side × side` images → `n × t × (ch·p·p)` rows, `t = (side/p)² + 1`,
    /// patch `(py, px)` in row `1 + py·side/p + px` as `(c, y, x)`; row 0 (the CLS slot) is zero.
    /// Writes the first `n·t·ch·p·p` values of `out`.
    #[allow(clippy::too_many_arguments)]
    fn patchify<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        ch: usize,
        side: usize,
        p: usize,
        out: &mut Self::Buffer<T>,
    ) -> Result<()>;
}

/// The loss, the estimator's label sampling and dropout over a backend's buffers.
pub trait LossOps: Backend {
    /// Softmax cross-entropy of `n` rows of `c` logits against `labels` (class indices stored
    /// as floats), label smoothing `eps`; writes `dlogits = scale·(softmax − target)` and
    /// returns `(Σ loss, number of rows whose argmax is the label)`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent<T: Scalar>(
        &self,
        logits: &Self::Buffer<T>,
        labels: &Self::Buffer<T>,
        n: usize,
        c: usize,
        eps: f64,
        scale: f64,
        dlogits: &mut Self::Buffer<T>,
    ) -> Result<(f64, usize)>;

    /// Draws `labels[i] ~ softmax(logits[i])` using `uniforms[i] ∈ [0, 1)`.
    fn sample_labels<T: Scalar>(
        &self,
        logits: &Self::Buffer<T>,
        n: usize,
        c: usize,
        uniforms: &Self::Buffer<T>,
        labels: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// Inverted dropout: `y = x·keep/(1 − p)`, `keep` from [`super::host::dropout_keep`]`(seed, i, p)`.
    fn dropout<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        len: usize,
        p: f64,
        seed: u64,
    ) -> Result<()>;
    /// Backward of dropout with the same `seed`.
    fn dropout_backward<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        len: usize,
        p: f64,
        seed: u64,
    ) -> Result<()>;
}

/// Every neural-network operation a model needs: implemented for the host backends (over
/// [`super::host_ops::HostMemory`]) and once for every device runtime (`nn::device`).
pub trait NnOps: ConvNetOps + TransformerOps + LossOps {}

impl<B: ConvNetOps + TransformerOps + LossOps> NnOps for B {}

pub(crate) fn need(what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        Err(Error::SizeMismatch {
            what: what.into(),
            expected: want,
            found: have,
        })
    } else {
        Ok(())
    }
}

/// `(side / p, ch·p·p)` of a patch extraction, or an error for a patch size that does not
/// divide the image.
pub(crate) fn patch_geometry(side: usize, p: usize, ch: usize) -> Result<(usize, usize)> {
    if p == 0 || !side.is_multiple_of(p) {
        return Err(Error::InvalidHyperParameter {
            field: "patch size",
            value: p as f64,
            allowed: "a divisor of the image side",
        });
    }
    Ok((side / p, ch * p * p))
}

/// `v` as an index when it is a whole number in `0..n` (labels and token ids travel as floats).
pub(crate) fn index_below(v: f64, n: usize) -> Option<usize> {
    (v >= 0.0 && v < n as f64 && v.fract() == 0.0).then_some(v as usize)
}

/// The error for a label or id that is not a class index below `c` (every backend's).
pub(crate) fn bad_label(label: f64, c: usize) -> Error {
    Error::InvalidInput {
        what: format!("label {label} (expected a class index below {c})"),
    }
}

/// Checks token ids (stored as floats) against a vocabulary of `vocab` ids, on the host: the
/// device embedding kernels cannot return an error without a download inside the step, so
/// ids are checked before they are uploaded.
pub fn check_token_ids<T: Scalar>(ids: &[T], vocab: usize) -> Result<()> {
    match ids
        .iter()
        .position(|v| index_below(v.as_f64(), vocab).is_none())
    {
        None => Ok(()),
        Some(i) => Err(Error::InvalidInput {
            what: format!(
                "token id {} at position {i} (expected an id below the vocabulary size {vocab})",
                ids[i].as_f64()
            ),
        }),
    }
}
