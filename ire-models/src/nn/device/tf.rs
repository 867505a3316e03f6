//! The transformer and loss operations on device backends: row norms, attention, RoPE,
//! SwiGLU, embeddings, softmax cross-entropy, sampling and dropout, as launches of the kernels
//! in `kernels/nn_tf.cl`.
//!
//! The kernels compute in the program's type `T`, where the host formulas compute in `f64`,
//! and their reductions over a row run as fixed trees: results match the host within
//! [`TF_TOLERANCES`](crate::nn::tolerances::TF_TOLERANCES), and are deterministic (the same inputs give the same bits, run to run).
//!
//! Errors are the host's, with one exception: finding an invalid embedding id would take a
//! download, so the lookup writes NaN for it (the loss then reports non-finite logits) and
//! its backward skips it. `softmax_xent` downloads its two scalars and its validity flags.

use ire_core::device::KernelArg::{self, Index, Real, U32};
use ire_core::device::{DeviceBackend, DeviceBuffer, Runtime, groups_for};
use ire_core::{Backend, Result, Scalar};

use super::kernels::{NN_KERNELS, exact_index, prod, unsupported};
use crate::nn::host_tf::{AttnShape, NormKind};
use crate::nn::ops::{TransformerOps, need, patch_geometry};

/// Buckets of one pass of the embedding backward's radix sort (`TF_RADIX`: one work-group).
const RADIX: usize = 256;

/// Rows (sequence, head, query), output values and `qkv` values of `s` (saturating).
fn attn_sizes(s: &AttnShape) -> (usize, usize, usize) {
    (
        prod(&[s.b, s.h, s.t]),
        prod(&[s.b, s.t, s.h, s.dh]),
        prod(&[s.b, s.t, 3, s.h, s.dh]),
    )
}

impl<R: Runtime> TransformerOps for DeviceBackend<R> {
    #[allow(clippy::too_many_arguments)]
    fn norm_rows<T: Scalar>(
        &self,
        kind: NormKind,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        rows: usize,
        d: usize,
        params: &DeviceBuffer<R, T>,
        g_off: usize,
        b_off: Option<usize>,
        mean: &mut DeviceBuffer<R, T>,
        rstd: &mut DeviceBuffer<R, T>,
        eps: f64,
    ) -> Result<()> {
        let plen = self.len(params);
        need("norm_rows", self.len(x).min(self.len(y)), prod(&[rows, d]))?;
        need(
            "norm_rows: statistics",
            self.len(mean).min(self.len(rstd)),
            rows,
        )?;
        need("norm_rows: gamma", plen.saturating_sub(g_off), d)?;
        if let Some(bo) = b_off {
            need("norm_rows: beta", plen.saturating_sub(bo), d)?;
        }
        let flags = u32::from(b_off.is_some()) | (u32::from(kind == NormKind::Rms) << 1);
        self.launch::<T>(
            &NN_KERNELS,
            "tf_norm_rows",
            rows,
            &[
                x.input(),
                y.output(),
                Index(d),
                params.input(),
                Index(g_off),
                Index(b_off.unwrap_or(0)),
                U32(flags),
                Real(eps),
                mean.output(),
                rstd.output(),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_rows_backward<T: Scalar>(
        &self,
        kind: NormKind,
        x: &DeviceBuffer<R, T>,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        rows: usize,
        d: usize,
        params: &DeviceBuffer<R, T>,
        g_off: usize,
        mean: &DeviceBuffer<R, T>,
        rstd: &DeviceBuffer<R, T>,
        grads: &mut DeviceBuffer<R, T>,
        dg_off: usize,
        db_off: Option<usize>,
    ) -> Result<()> {
        need(
            "norm_rows_backward",
            self.len(x).min(self.len(dy)).min(self.len(dx)),
            prod(&[rows, d]),
        )?;
        need(
            "norm_rows_backward: statistics",
            self.len(mean).min(self.len(rstd)),
            rows,
        )?;
        need(
            "norm_rows_backward: gamma",
            self.len(params).saturating_sub(g_off),
            d,
        )?;
        need(
            "norm_rows_backward: grads",
            self.len(grads)
                .saturating_sub(dg_off.max(db_off.unwrap_or(0))),
            d,
        )?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_norm_rows_dx",
            rows,
            &[
                x.input(),
                dy.input(),
                dx.output(),
                Index(d),
                params.input(),
                Index(g_off),
                U32(u32::from(kind == NormKind::Rms)),
                mean.input(),
                rstd.input(),
            ],
        )?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_norm_cols",
            groups_for(d),
            &[
                x.input(),
                dy.input(),
                Index(rows),
                Index(d),
                mean.input(),
                rstd.input(),
                grads.output(),
                Index(dg_off),
                Index(db_off.unwrap_or(0)),
                U32(u32::from(db_off.is_some())),
            ],
        )
    }

    fn attention<T: Scalar>(
        &self,
        qkv: &DeviceBuffer<R, T>,
        s: AttnShape,
        lse: &mut DeviceBuffer<R, T>,
        out: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        let (rows, outs, qkvs) = attn_sizes(&s);
        need("attention: qkv", self.len(qkv), qkvs)?;
        need("attention: lse", self.len(lse), rows)?;
        need("attention: out", self.len(out), outs)?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_attn_fwd",
            groups_for(rows),
            &[
                qkv.input(),
                Index(s.b),
                Index(s.t),
                Index(s.h),
                Index(s.dh),
                U32(u32::from(s.causal)),
                Real(s.scale()),
                Real(f64::NEG_INFINITY),
                out.output(),
                lse.output(),
            ],
        )
    }

    fn attention_backward<T: Scalar>(
        &self,
        qkv: &DeviceBuffer<R, T>,
        out: &DeviceBuffer<R, T>,
        lse: &DeviceBuffer<R, T>,
        dout: &DeviceBuffer<R, T>,
        s: AttnShape,
        dqkv: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        let (rows, outs, qkvs) = attn_sizes(&s);
        need(
            "attention_backward: qkv",
            self.len(qkv).min(self.len(dqkv)),
            qkvs,
        )?;
        need(
            "attention_backward: out",
            self.len(out).min(self.len(dout)),
            outs,
        )?;
        need("attention_backward: lse", self.len(lse), rows)?;
        if qkvs == 0 {
            return Ok(());
        }
        // D_i = dO_i · O_i of every row, written by the first kernel, read by the second.
        let mut drow = self.scratch::<T>(rows)?;
        let shape = || -> [KernelArg<'_, R::Mem>; 6] {
            [
                Index(s.b),
                Index(s.t),
                Index(s.h),
                Index(s.dh),
                U32(u32::from(s.causal)),
                Real(s.scale()),
            ]
        };
        let mut args = vec![qkv.input(), out.input(), lse.input(), dout.input()];
        args.extend(shape());
        args.extend([drow.output(), dqkv.output()]);
        self.launch::<T>(&NN_KERNELS, "tf_attn_bwd_q", groups_for(rows), &args)?;
        let mut args = vec![qkv.input(), lse.input(), dout.input(), drow.input()];
        args.extend(shape());
        args.push(dqkv.output());
        self.launch::<T>(&NN_KERNELS, "tf_attn_bwd_kv", groups_for(rows), &args)
    }

    fn rope<T: Scalar>(
        &self,
        qkv: &mut DeviceBuffer<R, T>,
        s: AttnShape,
        base: f64,
        inverse: bool,
    ) -> Result<()> {
        let (_, _, qkvs) = attn_sizes(&s);
        need("rope", self.len(qkv), qkvs)?;
        let pairs = prod(&[s.b, s.t, 2, s.h, s.dh / 2]);
        self.launch::<T>(
            &NN_KERNELS,
            "tf_rope",
            groups_for(pairs),
            &[
                qkv.output(),
                Index(s.b),
                Index(s.t),
                Index(s.h),
                Index(s.dh),
                Real(base),
                Real(if inverse { -1.0 } else { 1.0 }),
            ],
        )
    }

    fn swiglu<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        need("swiglu: x", self.len(x), prod(&[rows, 2, f]))?;
        need("swiglu: y", self.len(y), prod(&[rows, f]))?;
        let n = rows * f;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_swiglu",
            groups_for(n),
            &[x.input(), y.output(), Index(f), Index(n)],
        )
    }

    fn swiglu_backward<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        need(
            "swiglu_backward",
            self.len(x).min(self.len(dx)),
            prod(&[rows, 2, f]),
        )?;
        need("swiglu_backward: dy", self.len(dy), prod(&[rows, f]))?;
        let n = rows * f;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_swiglu_backward",
            groups_for(n),
            &[x.input(), dy.input(), dx.output(), Index(f), Index(n)],
        )
    }

    /// Embedding lookup. Unlike the host, an id that is not a class index below `vocab` is not
    /// an error here (finding it would take a download): its row of `y` is NaN, which the loss
    /// then reports as non-finite.
    #[allow(clippy::too_many_arguments)]
    fn embedding<T: Scalar>(
        &self,
        ids: &DeviceBuffer<R, T>,
        n: usize,
        table: &DeviceBuffer<R, T>,
        off: usize,
        vocab: usize,
        d: usize,
        y: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        need("embedding: ids", self.len(ids), n)?;
        need(
            "embedding: table",
            self.len(table).saturating_sub(off),
            prod(&[vocab, d]),
        )?;
        need("embedding: y", self.len(y), prod(&[n, d]))?;
        exact_index::<T>("embedding", vocab)?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_embedding",
            groups_for(n * d),
            &[
                ids.input(),
                table.input(),
                Index(off),
                Index(vocab),
                Index(d),
                y.output(),
                Index(n),
            ],
        )
    }

    /// Backward of the lookup; positions with an invalid id (an error on the host, NaN in the
    /// forward here) add nothing.
    #[allow(clippy::too_many_arguments)]
    fn embedding_backward<T: Scalar>(
        &self,
        ids: &DeviceBuffer<R, T>,
        n: usize,
        dy: &DeviceBuffer<R, T>,
        d: usize,
        vocab: usize,
        dtable: &mut DeviceBuffer<R, T>,
        off: usize,
    ) -> Result<()> {
        need("embedding_backward: ids", self.len(ids), n)?;
        need("embedding_backward: dy", self.len(dy), prod(&[n, d]))?;
        need(
            "embedding_backward: table",
            self.len(dtable).saturating_sub(off),
            prod(&[vocab, d]),
        )?;
        if n == 0 || d == 0 {
            return Ok(());
        }
        exact_index::<T>("embedding_backward", vocab)?;
        if u32::try_from(n.max(vocab)).is_err() {
            return Err(unsupported(&format!(
                "embedding_backward over {n} positions and {vocab} ids (sorted as 32-bit keys)"
            )));
        }
        // Stable radix sort of the positions by id (invalid ids get the key `vocab`), 8 bits
        // a pass: as many passes as `vocab` has bytes.
        let passes = (usize::BITS - vocab.leading_zeros()).div_ceil(8).max(1);
        let nblocks = n.div_ceil(RADIX);
        let mut keys = [self.scratch::<u32>(n)?, self.scratch::<u32>(n)?];
        let mut pos = [self.scratch::<u32>(n)?, self.scratch::<u32>(n)?];
        let mut counts = self.scratch::<u32>(RADIX * nblocks)?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_embed_keys",
            groups_for(n),
            &[
                ids.input(),
                Index(n),
                Index(vocab),
                keys[0].output(),
                pos[0].output(),
            ],
        )?;
        for pass in 0..passes as usize {
            let shift = || U32(8 * pass as u32);
            let src = pass % 2;
            self.launch::<T>(
                &NN_KERNELS,
                "tf_sort_count",
                nblocks,
                &[
                    keys[src].input(),
                    Index(n),
                    shift(),
                    Index(nblocks),
                    counts.output(),
                ],
            )?;
            self.launch::<T>(
                &NN_KERNELS,
                "tf_sort_scan",
                1,
                &[counts.output(), Index(RADIX * nblocks)],
            )?;
            let [ka, kb] = &mut keys;
            let [pa, pb] = &mut pos;
            let (ks, kd, ps, pd) = if src == 0 {
                (&*ka, kb, &*pa, pb)
            } else {
                (&*kb, ka, &*pb, pa)
            };
            self.launch::<T>(
                &NN_KERNELS,
                "tf_sort_scatter",
                nblocks,
                &[
                    ks.input(),
                    ps.input(),
                    Index(n),
                    shift(),
                    Index(nblocks),
                    counts.input(),
                    kd.output(),
                    pd.output(),
                ],
            )?;
        }
        let last = passes as usize % 2;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_embed_grad",
            groups_for(n * d),
            &[
                keys[last].input(),
                pos[last].input(),
                dy.input(),
                Index(n),
                Index(d),
                Index(vocab),
                dtable.output(),
                Index(off),
            ],
        )
    }

    fn add_positions<T: Scalar>(
        &self,
        x: &mut DeviceBuffer<R, T>,
        b: usize,
        t: usize,
        d: usize,
        table: &DeviceBuffer<R, T>,
        off: usize,
    ) -> Result<()> {
        need("add_positions: x", self.len(x), prod(&[b, t, d]))?;
        need(
            "add_positions: table",
            self.len(table).saturating_sub(off),
            prod(&[t, d]),
        )?;
        let n = b * t * d;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_add_positions",
            groups_for(n),
            &[
                x.output(),
                table.input(),
                Index(off),
                Index(t * d),
                Index(n),
            ],
        )
    }

    fn add_positions_backward<T: Scalar>(
        &self,
        dy: &DeviceBuffer<R, T>,
        b: usize,
        t: usize,
        d: usize,
        dtable: &mut DeviceBuffer<R, T>,
        off: usize,
    ) -> Result<()> {
        need("add_positions_backward: dy", self.len(dy), prod(&[b, t, d]))?;
        need(
            "add_positions_backward: table",
            self.len(dtable).saturating_sub(off),
            prod(&[t, d]),
        )?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_add_positions_backward",
            groups_for(t * d),
            &[
                dy.input(),
                Index(b),
                Index(t * d),
                dtable.output(),
                Index(off),
            ],
        )
    }

    fn patchify<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        n: usize,
        ch: usize,
        side: usize,
        p: usize,
        out: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        let (g, per) = patch_geometry(side, p, ch)?;
        let t = g * g + 1;
        need("patchify: x", self.len(x), prod(&[n, ch, side, side]))?;
        let total = prod(&[n, t, per]);
        need("patchify: out", self.len(out), total)?;
        self.launch::<T>(
            &NN_KERNELS,
            "tf_patchify",
            groups_for(total),
            &[
                x.input(),
                out.output(),
                Index(ch),
                Index(side),
                Index(p),
                Index(total),
            ],
        )
    }
}
