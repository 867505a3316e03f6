//! The transformer and loss operations on device backends: row norms, attention, RoPE,
//! SwiGLU, embeddings, softmax cross-entropy, sampling and dropout, as launches of the kernels
//! in `kernels/nn_tf.cl`.
//!
//! The kernels compute in the program's type `T`, where the host formulas compute in `f64`,
//! and their reductions over a row run as fixed trees: results match the host within
//! [`TF_TOLERANCES`], and are deterministic (the same inputs give the same bits, run to run).
//!
//! Errors are the host's, with one exception: finding an invalid embedding id would take a
//! download, so the lookup writes NaN for it (the loss then reports non-finite logits) and
//! its backward skips it. `softmax_xent` downloads its two scalars and its validity flags.

use ire_core::{DeviceKernels, Error, KernelArg, Result, Scalar};

use super::{NN_KERNELS, groups_for, unsupported};
use crate::nn::host_tf::{AttnShape, NormKind};
use crate::nn::ops::{bad_label, need, patch_geometry};

/// How closely each op matches the host (CPU/reference) implementation:
/// `(op, f32 tolerance, f64 tolerance, why)`. A tolerance bounds the largest absolute
/// difference over the outputs divided by the largest magnitude of the host's outputs;
/// `0.0` means bit-identical.
pub const TF_TOLERANCES: &[(&str, f64, f64, &str)] = &[
    (
        "softmax_xent",
        1e-5,
        1e-13,
        "exp/log of the device library; tree sums over a row; f32 arithmetic where the host uses f64",
    ),
    (
        "sample_labels",
        0.0,
        0.0,
        "the same class; the running sum may differ in its last bits, which moves only a uniform within rounding of a boundary",
    ),
    (
        "dropout",
        0.0,
        0.0,
        "the host's hash bit for bit, then the same single product",
    ),
    ("dropout_backward", 0.0, 0.0, "the kernel of dropout"),
    (
        "norm_rows",
        1e-5,
        1e-13,
        "tree sums for the mean and variance; f32 arithmetic where the host uses f64",
    ),
    (
        "norm_rows_backward",
        1e-5,
        1e-13,
        "tree sums for dx; dγ and dβ sum rows in the host's order (dβ bit-identical, f64 dγ too)",
    ),
    (
        "attention",
        1e-5,
        1e-13,
        "exp of the device library; f32 arithmetic where the host uses f64; sums in the host's order",
    ),
    (
        "attention_backward",
        1e-5,
        0.0,
        "sums in the host's order and no transcendental: f64 bit-identical; f32 rounds where the host keeps f64",
    ),
    (
        "rope",
        1e-4,
        1e-13,
        "pow/sin/cos of the device library; the f32 angle loses ~pos·2^-24 (6e-5 at position 1024)",
    ),
    (
        "swiglu",
        1e-6,
        1e-14,
        "exp of the device library; f32 arithmetic where the host uses f64",
    ),
    (
        "swiglu_backward",
        1e-6,
        1e-14,
        "exp of the device library; f32 arithmetic where the host uses f64",
    ),
    ("embedding", 0.0, 0.0, "a copy"),
    (
        "embedding_backward",
        0.0,
        0.0,
        "each table row sums its positions in the host's order",
    ),
    ("add_positions", 0.0, 0.0, "one addition per element"),
    (
        "add_positions_backward",
        0.0,
        0.0,
        "each table element sums the batch in the host's order",
    ),
    ("patchify", 0.0, 0.0, "a copy"),
];

type Arg<'a, D, T> = KernelArg<'a, D, T>;

fn launch<D: DeviceKernels, T: Scalar>(
    dev: &D,
    kernel: &'static str,
    groups: usize,
    args: &[Arg<'_, D, T>],
) -> Result<()> {
    dev.launch::<T>(&NN_KERNELS, kernel, groups, args)
}

/// A product of sizes that saturates instead of overflowing (then a size check fails).
fn prod(xs: &[usize]) -> usize {
    xs.iter().fold(1usize, |a, &x| a.saturating_mul(x))
}

/// Positions and classes are stored as `T`: in f32 only integers up to 2^24 are exact.
fn exact_index<T: Scalar>(what: &str, n: usize) -> Result<()> {
    if (n as f64) <= 2.0 / T::EPSILON_F64 {
        Ok(())
    } else {
        Err(unsupported(&format!(
            "{what} over {n} positions or classes in {}",
            std::any::type_name::<T>()
        )))
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn softmax_xent<D: DeviceKernels, T: Scalar>(
    dev: &D,
    logits: &D::Buffer<T>,
    labels: &D::Buffer<T>,
    n: usize,
    c: usize,
    eps: f64,
    scale: f64,
    dlogits: &mut D::Buffer<T>,
) -> Result<(f64, usize)> {
    need(
        "softmax_xent: logits",
        dev.len(logits).min(dev.len(dlogits)),
        prod(&[n, c]),
    )?;
    need("softmax_xent: labels", dev.len(labels), n)?;
    if n == 0 {
        return Ok((0.0, 0));
    }
    exact_index::<T>("softmax_xent", n.max(c))?;
    let mut info = dev.alloc::<T>(3 * n)?;
    let mut res = dev.alloc::<T>(5)?;
    launch(
        dev,
        "tf_xent_rows",
        n,
        &[
            Arg::In(logits),
            Arg::In(labels),
            Arg::Index(c),
            Arg::Real(eps / c as f64),
            Arg::Real(1.0 - eps),
            Arg::Real(scale),
            Arg::Out(dlogits),
            Arg::Out(&mut info),
        ],
    )?;
    launch(
        dev,
        "tf_xent_total",
        1,
        &[
            Arg::In(&info),
            Arg::In(labels),
            Arg::Index(n),
            Arg::Out(&mut res),
        ],
    )?;
    // The one download of the NN ops: loss and accuracy for the progress report, and the
    // validity flags that turn into the host's errors.
    let mut r = [T::zero(); 5];
    dev.download(&res, &mut r)?;
    if r[2].as_f64() > 0.0 {
        return Err(Error::NonFinite {
            what: "logits".into(),
        });
    }
    if r[4].as_f64() > 0.0 {
        return Err(bad_label(r[3].as_f64(), c));
    }
    Ok((r[0].as_f64(), r[1].as_f64().round() as usize))
}

pub(crate) fn sample_labels<D: DeviceKernels, T: Scalar>(
    dev: &D,
    logits: &D::Buffer<T>,
    n: usize,
    c: usize,
    uniforms: &D::Buffer<T>,
    labels: &mut D::Buffer<T>,
) -> Result<()> {
    need("sample_labels: logits", dev.len(logits), prod(&[n, c]))?;
    need("sample_labels", dev.len(uniforms).min(dev.len(labels)), n)?;
    if n == 0 {
        return Ok(());
    }
    exact_index::<T>("sample_labels", c)?;
    launch(
        dev,
        "tf_sample_rows",
        n,
        &[
            Arg::In(logits),
            Arg::Index(c),
            Arg::In(uniforms),
            Arg::Out(labels),
        ],
    )
}

pub(crate) fn dropout<D: DeviceKernels, T: Scalar>(
    dev: &D,
    x: &D::Buffer<T>,
    y: &mut D::Buffer<T>,
    len: usize,
    p: f64,
    seed: u64,
) -> Result<()> {
    need("dropout", dev.len(x).min(dev.len(y)), len)?;
    // The host keeps element i iff its 24-bit hash h satisfies h ≥ p·2^24 (exact in f64);
    // for an integer h that is h ≥ ⌈p·2^24⌉, a threshold the kernel compares in integers.
    let scaled = p * (1u64 << 24) as f64;
    let thr = if scaled.is_nan() {
        1u32 << 24
    } else {
        scaled.ceil().clamp(0.0, (1u32 << 24) as f64) as u32
    };
    launch(
        dev,
        "tf_dropout",
        groups_for(len),
        &[
            Arg::In(x),
            Arg::Out(y),
            Arg::Real(1.0 / (1.0 - p)),
            Arg::U32(seed as u32),
            Arg::U32((seed >> 32) as u32),
            Arg::U32(thr),
            Arg::Index(len),
        ],
    )
}

pub(crate) fn dropout_backward<D: DeviceKernels, T: Scalar>(
    dev: &D,
    dy: &D::Buffer<T>,
    dx: &mut D::Buffer<T>,
    len: usize,
    p: f64,
    seed: u64,
) -> Result<()> {
    dropout(dev, dy, dx, len, p, seed)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_rows<D: DeviceKernels, T: Scalar>(
    dev: &D,
    kind: NormKind,
    x: &D::Buffer<T>,
    y: &mut D::Buffer<T>,
    rows: usize,
    d: usize,
    params: &D::Buffer<T>,
    g_off: usize,
    b_off: Option<usize>,
    mean: &mut D::Buffer<T>,
    rstd: &mut D::Buffer<T>,
    eps: f64,
) -> Result<()> {
    let plen = dev.len(params);
    need("norm_rows", dev.len(x).min(dev.len(y)), prod(&[rows, d]))?;
    need(
        "norm_rows: statistics",
        dev.len(mean).min(dev.len(rstd)),
        rows,
    )?;
    need("norm_rows: gamma", plen.saturating_sub(g_off), d)?;
    if let Some(bo) = b_off {
        need("norm_rows: beta", plen.saturating_sub(bo), d)?;
    }
    let flags = u32::from(b_off.is_some()) | (u32::from(kind == NormKind::Rms) << 1);
    launch(
        dev,
        "tf_norm_rows",
        rows,
        &[
            Arg::In(x),
            Arg::Out(y),
            Arg::Index(d),
            Arg::In(params),
            Arg::Index(g_off),
            Arg::Index(b_off.unwrap_or(0)),
            Arg::U32(flags),
            Arg::Real(eps),
            Arg::Out(mean),
            Arg::Out(rstd),
        ],
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_rows_backward<D: DeviceKernels, T: Scalar>(
    dev: &D,
    kind: NormKind,
    x: &D::Buffer<T>,
    dy: &D::Buffer<T>,
    dx: &mut D::Buffer<T>,
    rows: usize,
    d: usize,
    params: &D::Buffer<T>,
    g_off: usize,
    mean: &D::Buffer<T>,
    rstd: &D::Buffer<T>,
    grads: &mut D::Buffer<T>,
    dg_off: usize,
    db_off: Option<usize>,
) -> Result<()> {
    need(
        "norm_rows_backward",
        dev.len(x).min(dev.len(dy)).min(dev.len(dx)),
        prod(&[rows, d]),
    )?;
    need(
        "norm_rows_backward: statistics",
        dev.len(mean).min(dev.len(rstd)),
        rows,
    )?;
    need(
        "norm_rows_backward: gamma",
        dev.len(params).saturating_sub(g_off),
        d,
    )?;
    need(
        "norm_rows_backward: grads",
        dev.len(grads)
            .saturating_sub(dg_off.max(db_off.unwrap_or(0))),
        d,
    )?;
    launch(
        dev,
        "tf_norm_rows_dx",
        rows,
        &[
            Arg::In(x),
            Arg::In(dy),
            Arg::Out(dx),
            Arg::Index(d),
            Arg::In(params),
            Arg::Index(g_off),
            Arg::U32(u32::from(kind == NormKind::Rms)),
            Arg::In(mean),
            Arg::In(rstd),
        ],
    )?;
    launch(
        dev,
        "tf_norm_cols",
        groups_for(d),
        &[
            Arg::In(x),
            Arg::In(dy),
            Arg::Index(rows),
            Arg::Index(d),
            Arg::In(mean),
            Arg::In(rstd),
            Arg::Out(grads),
            Arg::Index(dg_off),
            Arg::Index(db_off.unwrap_or(0)),
            Arg::U32(u32::from(db_off.is_some())),
        ],
    )
}

/// `1/√dh`, computed on the host in f64 as the host formulas do.
fn attn_scale(s: &AttnShape) -> f64 {
    1.0 / (s.dh as f64).sqrt()
}

/// Rows (sequence, head, query), output values and `qkv` values of `s` (saturating).
fn attn_sizes(s: &AttnShape) -> (usize, usize, usize) {
    (
        prod(&[s.b, s.h, s.t]),
        prod(&[s.b, s.t, s.h, s.dh]),
        prod(&[s.b, s.t, 3, s.h, s.dh]),
    )
}

pub(crate) fn attention<D: DeviceKernels, T: Scalar>(
    dev: &D,
    qkv: &D::Buffer<T>,
    s: AttnShape,
    probs: &mut D::Buffer<T>,
    out: &mut D::Buffer<T>,
) -> Result<()> {
    let (rows, outs, qkvs) = attn_sizes(&s);
    need("attention: qkv", dev.len(qkv), qkvs)?;
    need(
        "attention: probs",
        dev.len(probs),
        prod(&[s.b, s.h, s.t, s.t]),
    )?;
    need("attention: out", dev.len(out), outs)?;
    launch(
        dev,
        "tf_attn_probs",
        groups_for(rows),
        &[
            Arg::In(qkv),
            Arg::Index(s.b),
            Arg::Index(s.t),
            Arg::Index(s.h),
            Arg::Index(s.dh),
            Arg::U32(u32::from(s.causal)),
            Arg::Real(attn_scale(&s)),
            Arg::Out(probs),
        ],
    )?;
    launch(
        dev,
        "tf_attn_out",
        groups_for(outs),
        &[
            Arg::In(qkv),
            Arg::In(probs),
            Arg::Index(s.b),
            Arg::Index(s.t),
            Arg::Index(s.h),
            Arg::Index(s.dh),
            Arg::U32(u32::from(s.causal)),
            Arg::Out(out),
        ],
    )
}

pub(crate) fn attention_backward<D: DeviceKernels, T: Scalar>(
    dev: &D,
    qkv: &D::Buffer<T>,
    probs: &D::Buffer<T>,
    dout: &D::Buffer<T>,
    s: AttnShape,
    dqkv: &mut D::Buffer<T>,
) -> Result<()> {
    let (rows, outs, qkvs) = attn_sizes(&s);
    let plen = prod(&[s.b, s.h, s.t, s.t]);
    need(
        "attention_backward: qkv",
        dev.len(qkv).min(dev.len(dqkv)),
        qkvs,
    )?;
    need("attention_backward: probs", dev.len(probs), plen)?;
    need("attention_backward: dout", dev.len(dout), outs)?;
    if qkvs == 0 {
        return Ok(());
    }
    // dS of every (sequence, head), the shape of the probabilities.
    let mut ds = dev.alloc::<T>(plen)?;
    launch(
        dev,
        "tf_attn_ds",
        groups_for(rows),
        &[
            Arg::In(qkv),
            Arg::In(probs),
            Arg::In(dout),
            Arg::Index(s.b),
            Arg::Index(s.t),
            Arg::Index(s.h),
            Arg::Index(s.dh),
            Arg::U32(u32::from(s.causal)),
            Arg::Real(attn_scale(&s)),
            Arg::Out(&mut ds),
        ],
    )?;
    launch(
        dev,
        "tf_attn_dqkv",
        groups_for(qkvs),
        &[
            Arg::In(qkv),
            Arg::In(probs),
            Arg::In(dout),
            Arg::In(&ds),
            Arg::Index(s.b),
            Arg::Index(s.t),
            Arg::Index(s.h),
            Arg::Index(s.dh),
            Arg::U32(u32::from(s.causal)),
            Arg::Out(dqkv),
        ],
    )
}

pub(crate) fn rope<D: DeviceKernels, T: Scalar>(
    dev: &D,
    qkv: &mut D::Buffer<T>,
    s: AttnShape,
    base: f64,
    inverse: bool,
) -> Result<()> {
    let (_, _, qkvs) = attn_sizes(&s);
    need("rope", dev.len(qkv), qkvs)?;
    let pairs = prod(&[s.b, s.t, 2, s.h, s.dh / 2]);
    launch(
        dev,
        "tf_rope",
        groups_for(pairs),
        &[
            Arg::Out(qkv),
            Arg::Index(s.b),
            Arg::Index(s.t),
            Arg::Index(s.h),
            Arg::Index(s.dh),
            Arg::Real(base),
            Arg::Real(if inverse { -1.0 } else { 1.0 }),
        ],
    )
}

pub(crate) fn swiglu<D: DeviceKernels, T: Scalar>(
    dev: &D,
    x: &D::Buffer<T>,
    y: &mut D::Buffer<T>,
    rows: usize,
    f: usize,
) -> Result<()> {
    need("swiglu: x", dev.len(x), prod(&[rows, 2, f]))?;
    need("swiglu: y", dev.len(y), prod(&[rows, f]))?;
    let n = rows * f;
    launch(
        dev,
        "tf_swiglu",
        groups_for(n),
        &[Arg::In(x), Arg::Out(y), Arg::Index(f), Arg::Index(n)],
    )
}

pub(crate) fn swiglu_backward<D: DeviceKernels, T: Scalar>(
    dev: &D,
    x: &D::Buffer<T>,
    dy: &D::Buffer<T>,
    dx: &mut D::Buffer<T>,
    rows: usize,
    f: usize,
) -> Result<()> {
    need(
        "swiglu_backward",
        dev.len(x).min(dev.len(dx)),
        prod(&[rows, 2, f]),
    )?;
    need("swiglu_backward: dy", dev.len(dy), prod(&[rows, f]))?;
    let n = rows * f;
    launch(
        dev,
        "tf_swiglu_backward",
        groups_for(n),
        &[
            Arg::In(x),
            Arg::In(dy),
            Arg::Out(dx),
            Arg::Index(f),
            Arg::Index(n),
        ],
    )
}

/// Embedding lookup. Unlike the host, an id that is not a class index below `vocab` is not
/// an error here (finding it would take a download): its row of `y` is NaN, which the loss
/// then reports as non-finite.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embedding<D: DeviceKernels, T: Scalar>(
    dev: &D,
    ids: &D::Buffer<T>,
    n: usize,
    table: &D::Buffer<T>,
    off: usize,
    vocab: usize,
    d: usize,
    y: &mut D::Buffer<T>,
) -> Result<()> {
    need("embedding: ids", dev.len(ids), n)?;
    need(
        "embedding: table",
        dev.len(table).saturating_sub(off),
        prod(&[vocab, d]),
    )?;
    need("embedding: y", dev.len(y), prod(&[n, d]))?;
    exact_index::<T>("embedding", vocab)?;
    launch(
        dev,
        "tf_embedding",
        groups_for(n * d),
        &[
            Arg::In(ids),
            Arg::In(table),
            Arg::Index(off),
            Arg::Index(vocab),
            Arg::Index(d),
            Arg::Out(y),
            Arg::Index(n),
        ],
    )
}

/// Backward of the lookup; positions with an invalid id (an error on the host, NaN in the
/// forward here) add nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embedding_backward<D: DeviceKernels, T: Scalar>(
    dev: &D,
    ids: &D::Buffer<T>,
    n: usize,
    dy: &D::Buffer<T>,
    d: usize,
    vocab: usize,
    dtable: &mut D::Buffer<T>,
    off: usize,
) -> Result<()> {
    need("embedding_backward: ids", dev.len(ids), n)?;
    need("embedding_backward: dy", dev.len(dy), prod(&[n, d]))?;
    need(
        "embedding_backward: table",
        dev.len(dtable).saturating_sub(off),
        prod(&[vocab, d]),
    )?;
    if n == 0 || d == 0 {
        return Ok(());
    }
    exact_index::<T>("embedding_backward", n.max(vocab))?;
    // For each position: the next one with the same id, and whether it is the first.
    let mut chain = dev.alloc::<T>(2 * n)?;
    launch(
        dev,
        "tf_embed_chain",
        groups_for(n),
        &[
            Arg::In(ids),
            Arg::Index(n),
            Arg::Index(vocab),
            Arg::Out(&mut chain),
        ],
    )?;
    launch(
        dev,
        "tf_embed_grad",
        groups_for(n * d),
        &[
            Arg::In(ids),
            Arg::In(&chain),
            Arg::In(dy),
            Arg::Index(n),
            Arg::Index(d),
            Arg::Out(dtable),
            Arg::Index(off),
        ],
    )
}

pub(crate) fn add_positions<D: DeviceKernels, T: Scalar>(
    dev: &D,
    x: &mut D::Buffer<T>,
    b: usize,
    t: usize,
    d: usize,
    table: &D::Buffer<T>,
    off: usize,
) -> Result<()> {
    need("add_positions: x", dev.len(x), prod(&[b, t, d]))?;
    need(
        "add_positions: table",
        dev.len(table).saturating_sub(off),
        prod(&[t, d]),
    )?;
    let n = b * t * d;
    launch(
        dev,
        "tf_add_positions",
        groups_for(n),
        &[
            Arg::Out(x),
            Arg::In(table),
            Arg::Index(off),
            Arg::Index(t * d),
            Arg::Index(n),
        ],
    )
}

pub(crate) fn add_positions_backward<D: DeviceKernels, T: Scalar>(
    dev: &D,
    dy: &D::Buffer<T>,
    b: usize,
    t: usize,
    d: usize,
    dtable: &mut D::Buffer<T>,
    off: usize,
) -> Result<()> {
    need("add_positions_backward: dy", dev.len(dy), prod(&[b, t, d]))?;
    need(
        "add_positions_backward: table",
        dev.len(dtable).saturating_sub(off),
        prod(&[t, d]),
    )?;
    launch(
        dev,
        "tf_add_positions_backward",
        groups_for(t * d),
        &[
            Arg::In(dy),
            Arg::Index(b),
            Arg::Index(t * d),
            Arg::Out(dtable),
            Arg::Index(off),
        ],
    )
}

pub(crate) fn patchify<D: DeviceKernels, T: Scalar>(
    dev: &D,
    x: &D::Buffer<T>,
    n: usize,
    ch: usize,
    side: usize,
    p: usize,
    out: &mut D::Buffer<T>,
) -> Result<()> {
    let (g, per) = patch_geometry(side, p, ch)?;
    let t = g * g + 1;
    need("patchify: x", dev.len(x), prod(&[n, ch, side, side]))?;
    let total = prod(&[n, t, per]);
    need("patchify: out", dev.len(out), total)?;
    launch(
        dev,
        "tf_patchify",
        groups_for(total),
        &[
            Arg::In(x),
            Arg::Out(out),
            Arg::Index(ch),
            Arg::Index(side),
            Arg::Index(p),
            Arg::Index(total),
        ],
    )
}
