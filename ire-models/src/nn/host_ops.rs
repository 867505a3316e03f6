//! The neural-network operations on backends whose buffers live in host memory (the reference
//! backend, sequential: the oracle; the CPU backend, parallel over images, rows or channels,
//! with the same bits).

use ire_core::{Backend, Error, GemmShape, Result, Scalar};
use rayon::prelude::*;

use super::attention;
use super::batch_norm::{self, BnMode, BnShape, BnState, BnSync};
use super::conv::{self, ConvGeom};
use super::gemm_fast;
use super::host;
use super::host_tf::{self, AttnShape, NormKind};
use super::ops::{
    ConvNetOps, LossOps, TransformerOps, bad_label, check_token_ids, index_below, need,
    patch_geometry,
};
use super::xent;

/// A backend whose buffers are host memory: the neural-network ops run on slices.
pub trait HostMemory: Backend {
    /// The elements of a buffer.
    fn host<E: ire_core::Element>(buf: &Self::Buffer<E>) -> &[E];
    /// The elements of a buffer, mutably.
    fn host_mut<E: ire_core::Element>(buf: &mut Self::Buffer<E>) -> &mut [E];
    /// Whether to split work across threads.
    fn parallel(&self) -> bool {
        false
    }
    /// The matrix product on slices (default: the naive loop).
    fn host_gemm<T: Scalar>(&self, g: GemmShape, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
        host::gemm(g, alpha, a, b, beta, c)
    }
}

impl HostMemory for ire_core::Reference {
    fn host<E: ire_core::Element>(buf: &Self::Buffer<E>) -> &[E] {
        buf.as_slice()
    }
    fn host_mut<E: ire_core::Element>(buf: &mut Self::Buffer<E>) -> &mut [E] {
        buf.as_mut_slice()
    }
}

impl HostMemory for ire_backend_cpu::CpuBackend {
    fn host<E: ire_core::Element>(buf: &Self::Buffer<E>) -> &[E] {
        buf.as_slice()
    }
    fn host_mut<E: ire_core::Element>(buf: &mut Self::Buffer<E>) -> &mut [E] {
        buf.as_mut_slice()
    }
    fn parallel(&self) -> bool {
        true
    }
    fn host_gemm<T: Scalar>(&self, g: GemmShape, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
        gemm_fast::gemm(g, alpha, a, b, beta, c)
    }
}

/// Images per parallel task in the convolutions: enough to amortize a task, few enough that
/// both cores get work on small batches.
const CONV_CHUNK: usize = 4;

impl<B: HostMemory + Sync> ConvNetOps for B {
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
    ) -> Result<()> {
        let (na, nb, nc) = g.sizes();
        let (a, b, c) = (B::host(a), B::host(b), B::host_mut(c));
        need("gemm: A", a.len().saturating_sub(a_off), na)?;
        need("gemm: B", b.len().saturating_sub(b_off), nb)?;
        need("gemm: C", c.len().saturating_sub(c_off), nc)?;
        let (a, b, c) = (
            &a[a_off..a_off + na],
            &b[b_off..b_off + nb],
            &mut c[c_off..c_off + nc],
        );
        if self.parallel() && g.m >= 64 && g.m * g.n * g.k >= 1 << 18 {
            // Split C by rows: each task multiplies a block of op(A)'s rows.
            let rows =
                g.m.div_ceil(rayon::current_num_threads().max(1) * 2)
                    .max(16);
            c.par_chunks_mut(rows * g.n)
                .enumerate()
                .for_each(|(i, cb)| {
                    let r0 = i * rows;
                    let mr = cb.len() / g.n.max(1);
                    let gi = GemmShape { m: mr, ..g };
                    // Rows r0.. of op(A): offset r0·k when stored plainly, r0 columns when transposed.
                    if g.trans_a {
                        let sub: Vec<T> = (0..g.k)
                            .flat_map(|p| a[p * g.m + r0..p * g.m + r0 + mr].iter().copied())
                            .collect();
                        self.host_gemm(gi, alpha, &sub, b, beta, cb);
                    } else {
                        self.host_gemm(gi, alpha, &a[r0 * g.k..(r0 + mr) * g.k], b, beta, cb);
                    }
                });
        } else {
            self.host_gemm(g, alpha, a, b, beta, c);
        }
        Ok(())
    }

    fn add_row_bias<T: Scalar>(
        &self,
        y: &mut Self::Buffer<T>,
        rows: usize,
        cols: usize,
        bias: &Self::Buffer<T>,
        b_off: usize,
    ) -> Result<()> {
        let (y, bias) = (B::host_mut(y), B::host(bias));
        need("add_row_bias: y", y.len(), rows * cols)?;
        need("add_row_bias: bias", bias.len().saturating_sub(b_off), cols)?;
        let bias = &bias[b_off..b_off + cols];
        for r in y[..rows * cols].chunks_exact_mut(cols.max(1)) {
            for (v, &b) in r.iter_mut().zip(bias) {
                *v = *v + b;
            }
        }
        Ok(())
    }

    fn row_bias_grad<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        rows: usize,
        cols: usize,
        db: &mut Self::Buffer<T>,
        db_off: usize,
    ) -> Result<()> {
        let (dy, db) = (B::host(dy), B::host_mut(db));
        need("row_bias_grad: dy", dy.len(), rows * cols)?;
        need("row_bias_grad: db", db.len().saturating_sub(db_off), cols)?;
        let db = &mut db[db_off..db_off + cols];
        for r in dy[..rows * cols].chunks_exact(cols.max(1)) {
            for (d, &g) in db.iter_mut().zip(r) {
                *d = *d + g;
            }
        }
        Ok(())
    }

    fn conv2d<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        w: &Self::Buffer<T>,
        w_off: usize,
        y: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (x, w, y) = (B::host(x), B::host(w), B::host_mut(y));
        need("conv2d: x", x.len(), n * g.in_size())?;
        need("conv2d: w", w.len().saturating_sub(w_off), g.weight_size())?;
        need("conv2d: y", y.len(), n * g.out_size())?;
        let w = &w[w_off..w_off + g.weight_size()];
        let gm = GemmShape {
            trans_a: false,
            trans_b: false,
            m: g.c_out,
            n: g.col_cols(),
            k: g.col_rows(),
        };
        let one_image = |xi: &[T], yi: &mut [T], cols: &mut Vec<T>| {
            if g.k == 1 && g.stride == 1 && g.pad == 0 {
                self.host_gemm(gm, T::one(), w, xi, T::zero(), yi);
            } else {
                cols.resize(g.col_rows() * g.col_cols(), T::zero());
                conv::im2col(xi, g, cols);
                self.host_gemm(gm, T::one(), w, cols, T::zero(), yi);
            }
        };
        let xs = x[..n * g.in_size()].chunks(g.in_size().max(1));
        let ys = y[..n * g.out_size()].chunks_mut(g.out_size().max(1));
        if self.parallel() && n > 1 {
            xs.zip(ys)
                .collect::<Vec<_>>()
                .par_chunks_mut(CONV_CHUNK)
                .for_each(|chunk| {
                    let mut cols = Vec::new();
                    for (xi, yi) in chunk.iter_mut() {
                        one_image(xi, yi, &mut cols);
                    }
                });
        } else {
            let mut cols = Vec::new();
            for (xi, yi) in xs.zip(ys) {
                one_image(xi, yi, &mut cols);
            }
        }
        Ok(())
    }

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
    ) -> Result<()> {
        let (x, w, dy) = (B::host(x), B::host(w), B::host(dy));
        need("conv2d_backward: x", x.len(), n * g.in_size())?;
        need(
            "conv2d_backward: w",
            w.len().saturating_sub(w_off),
            g.weight_size(),
        )?;
        need("conv2d_backward: dy", dy.len(), n * g.out_size())?;
        let w = &w[w_off..w_off + g.weight_size()];
        let mut dx = dx.map(|d| B::host_mut(d));
        if let Some(d) = dx.as_deref() {
            need("conv2d_backward: dx", d.len(), n * g.in_size())?;
        }
        let (rows, cols_n) = (g.col_rows(), g.col_cols());
        let direct = g.k == 1 && g.stride == 1 && g.pad == 0;
        // dW_chunkᵀ = Σ_i cols_i · dY_iᵀ (`rows × c_out`: the faster GEMM layout, see
        // gemm_fast; the same products summed in the same order as dY_i · cols_iᵀ);
        // dcols_i = Wᵀ · dY_i, folded into dx_i.
        let chunk_grad = |xs: &[T], dys: &[T], mut dxs: Option<&mut [T]>| -> Vec<T> {
            let mut dwp = vec![T::zero(); g.weight_size()];
            let mut cols = vec![T::zero(); if direct { 0 } else { rows * cols_n }];
            let mut dcols = vec![T::zero(); rows * cols_n];
            for i in 0..xs.len() / g.in_size().max(1) {
                let xi = &xs[i * g.in_size()..(i + 1) * g.in_size()];
                let dyi = &dys[i * g.out_size()..(i + 1) * g.out_size()];
                let ci: &[T] = if direct {
                    xi
                } else {
                    conv::im2col(xi, g, &mut cols);
                    &cols
                };
                let gw = GemmShape {
                    trans_a: false,
                    trans_b: true,
                    m: rows,
                    n: g.c_out,
                    k: cols_n,
                };
                self.host_gemm(gw, T::one(), ci, dyi, T::one(), &mut dwp);
                if let Some(dxs) = dxs.as_deref_mut() {
                    let dxi = &mut dxs[i * g.in_size()..(i + 1) * g.in_size()];
                    let gx = GemmShape {
                        trans_a: true,
                        trans_b: false,
                        m: rows,
                        n: cols_n,
                        k: g.c_out,
                    };
                    if direct {
                        self.host_gemm(gx, T::one(), w, dyi, T::zero(), dxi);
                    } else {
                        self.host_gemm(gx, T::one(), w, dyi, T::zero(), &mut dcols);
                        dxi.iter_mut().for_each(|v| *v = T::zero());
                        conv::col2im(&dcols, g, dxi);
                    }
                }
            }
            dwp
        };
        let xs = &x[..n * g.in_size()];
        let dys = &dy[..n * g.out_size()];
        let partials: Vec<Vec<T>> = if self.parallel() && n > 1 {
            let per = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let xin: Vec<&[T]> = xs.chunks(per * g.in_size().max(1)).collect();
            let dyc: Vec<&[T]> = dys.chunks(per * g.out_size().max(1)).collect();
            match dx.as_deref_mut() {
                Some(d) => {
                    let dxc: Vec<&mut [T]> = d[..n * g.in_size()]
                        .chunks_mut(per * g.in_size().max(1))
                        .collect();
                    xin.into_par_iter()
                        .zip(dyc)
                        .zip(dxc)
                        .map(|((a, b), c)| chunk_grad(a, b, Some(c)))
                        .collect()
                }
                None => xin
                    .into_par_iter()
                    .zip(dyc)
                    .map(|(a, b)| chunk_grad(a, b, None))
                    .collect(),
            }
        } else {
            vec![chunk_grad(xs, dys, dx.map(|d| &mut d[..n * g.in_size()]))]
        };
        let dw = B::host_mut(dw);
        need(
            "conv2d_backward: dw",
            dw.len().saturating_sub(dw_off),
            g.weight_size(),
        )?;
        let dw = &mut dw[dw_off..dw_off + g.weight_size()];
        for p in partials {
            // p is dWᵀ (rows × c_out).
            for (r, pr) in p.chunks_exact(g.c_out.max(1)).enumerate() {
                for (o, &v) in pr.iter().enumerate() {
                    dw[o * rows + r] = dw[o * rows + r] + v;
                }
            }
        }
        Ok(())
    }

    fn relu<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()> {
        let (x, y) = (B::host(x), B::host_mut(y));
        need("relu", x.len().min(y.len()), len)?;
        host::relu(&x[..len], &mut y[..len]);
        Ok(())
    }

    fn relu_backward<T: Scalar>(
        &self,
        y: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()> {
        let (y, dy, dx) = (B::host(y), B::host(dy), B::host_mut(dx));
        need("relu_backward", y.len().min(dy.len()).min(dx.len()), len)?;
        host::relu_backward(&y[..len], &dy[..len], &mut dx[..len]);
        Ok(())
    }

    fn gelu<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()> {
        let (x, y) = (B::host(x), B::host_mut(y));
        need("gelu", x.len().min(y.len()), len)?;
        host::gelu(&x[..len], &mut y[..len]);
        Ok(())
    }

    fn gelu_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<()> {
        let (x, dy, dx) = (B::host(x), B::host(dy), B::host_mut(dx));
        need("gelu_backward", x.len().min(dy.len()).min(dx.len()), len)?;
        host::gelu_backward(&x[..len], &dy[..len], &mut dx[..len]);
        Ok(())
    }

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
    ) -> Result<()> {
        host_batch_norm(
            self,
            x,
            y,
            s,
            (params, g_off, b_off),
            st,
            mode,
            (momentum, eps),
            None,
        )
    }

    fn batch_norm_synced<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        s: BnShape,
        params: &Self::Buffer<T>,
        (g_off, b_off): (usize, usize),
        st: BnState<'_, Self, T>,
        update_running: bool,
        (momentum, eps): (f64, f64),
        sync: &dyn BnSync,
    ) -> Result<()> {
        let mode = BnMode::Train { update_running };
        host_batch_norm(
            self,
            x,
            y,
            s,
            (params, g_off, b_off),
            st,
            mode,
            (momentum, eps),
            Some(sync),
        )
    }

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
    ) -> Result<()> {
        host_batch_norm_backward(
            self,
            x,
            dy,
            dx,
            s,
            (params, g_off),
            (save_mean, save_invstd),
            (grads, dg_off, db_off),
            None,
        )
    }

    fn batch_norm_backward_synced<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        s: BnShape,
        (params, g_off): (&Self::Buffer<T>, usize),
        saved: (&Self::Buffer<T>, &Self::Buffer<T>),
        (grads, dg_off, db_off): (&mut Self::Buffer<T>, usize, usize),
        sync: &dyn BnSync,
    ) -> Result<()> {
        host_batch_norm_backward(
            self,
            x,
            dy,
            dx,
            s,
            (params, g_off),
            saved,
            (grads, dg_off, db_off),
            Some(sync),
        )
    }

    fn global_avg_pool<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        s: BnShape,
    ) -> Result<()> {
        let (x, y) = (B::host(x), B::host_mut(y));
        need("global_avg_pool: x", x.len(), s.n * s.c * s.hw)?;
        need("global_avg_pool: y", y.len(), s.n * s.c)?;
        let inv = T::of(1.0 / s.hw as f64);
        for (o, xs) in y[..s.n * s.c].iter_mut().zip(x.chunks_exact(s.hw.max(1))) {
            *o = xs.iter().fold(T::zero(), |a, &v| a + v) * inv;
        }
        Ok(())
    }

    fn global_avg_pool_backward<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        s: BnShape,
    ) -> Result<()> {
        let (dy, dx) = (B::host(dy), B::host_mut(dx));
        need("global_avg_pool_backward: dy", dy.len(), s.n * s.c)?;
        need("global_avg_pool_backward: dx", dx.len(), s.n * s.c * s.hw)?;
        let inv = T::of(1.0 / s.hw as f64);
        for (d, xs) in dy[..s.n * s.c].iter().zip(dx.chunks_exact_mut(s.hw.max(1))) {
            xs.iter_mut().for_each(|v| *v = *d * inv);
        }
        Ok(())
    }

    fn max_pool2d<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        y: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (x, y) = (B::host(x), B::host_mut(y));
        let (oh, ow) = (g.oh(), g.ow());
        need("max_pool2d: x", x.len(), n * g.in_size())?;
        need("max_pool2d: y", y.len(), n * g.c_in * oh * ow)?;
        for img in 0..n * g.c_in {
            let xi = &x[img * g.h * g.w..(img + 1) * g.h * g.w];
            for oy in 0..oh {
                for ox in 0..ow {
                    y[img * oh * ow + oy * ow + ox] = max_window(xi, g, oy, ox).1;
                }
            }
        }
        Ok(())
    }

    fn max_pool2d_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        g: &ConvGeom,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (x, dy, dx) = (B::host(x), B::host(dy), B::host_mut(dx));
        let (oh, ow) = (g.oh(), g.ow());
        need(
            "max_pool2d_backward",
            x.len().min(dx.len()),
            n * g.in_size(),
        )?;
        need("max_pool2d_backward: dy", dy.len(), n * g.c_in * oh * ow)?;
        dx[..n * g.in_size()]
            .iter_mut()
            .for_each(|v| *v = T::zero());
        for img in 0..n * g.c_in {
            let xi = &x[img * g.h * g.w..(img + 1) * g.h * g.w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (at, _) = max_window(xi, g, oy, ox);
                    if let Some(at) = at {
                        let d = &mut dx[img * g.h * g.w + at];
                        *d = *d + dy[img * oh * ow + oy * ow + ox];
                    }
                }
            }
        }
        Ok(())
    }

    fn scale<T: Scalar>(&self, x: &mut Self::Buffer<T>, s: T) -> Result<()> {
        B::host_mut(x).iter_mut().for_each(|v| *v = *v * s);
        Ok(())
    }
}

/// The host batch norm, its statistics over this process's examples or (`sync`) over the whole
/// batch of a group.
#[allow(clippy::too_many_arguments)]
fn host_batch_norm<B: HostMemory + Sync, T: Scalar>(
    b: &B,
    x: &B::Buffer<T>,
    y: &mut B::Buffer<T>,
    s: BnShape,
    (params, g_off, b_off): (&B::Buffer<T>, usize, usize),
    st: BnState<'_, B, T>,
    mode: BnMode,
    (momentum, eps): (f64, f64),
    sync: Option<&dyn BnSync>,
) -> Result<()> {
    let (x, y, p) = (B::host(x), B::host_mut(y), B::host(params));
    let len = s.n * s.c * s.hw;
    need("batch_norm: x", x.len().min(y.len()), len)?;
    need("batch_norm: gamma", p.len().saturating_sub(g_off), s.c)?;
    need("batch_norm: beta", p.len().saturating_sub(b_off), s.c)?;
    let (rm, rv) = (B::host_mut(st.running_mean), B::host_mut(st.running_var));
    let (sm, si) = (B::host_mut(st.save_mean), B::host_mut(st.save_invstd));
    need(
        "batch_norm: statistics",
        rm.len().min(rv.len()).min(sm.len()).min(si.len()),
        s.c,
    )?;
    let mut m = (s.n * s.hw) as f64;
    // Per channel (mean, invstd): the statistics read x channel by channel (in parallel),
    // the normalization then writes y image by image (in parallel).
    let stats: Vec<(f64, f64)> = match (mode, sync) {
        (BnMode::Eval, _) => Vec::new(),
        (BnMode::Train { .. }, Some(sync)) => {
            let (stats, whole) = batch_norm::bn_synced_stats(x, s, b.parallel(), sync)?;
            m = whole;
            stats
        }
        (BnMode::Train { .. }, None) => {
            let one = |ch| batch_norm::bn_channel_stats(x, s, ch);
            if b.parallel() {
                (0..s.c).into_par_iter().map(one).collect()
            } else {
                (0..s.c).map(one).collect()
            }
        }
    };
    let mut coef = Vec::with_capacity(s.c);
    for ch in 0..s.c {
        let (gamma, beta) = (p[g_off + ch], p[b_off + ch]);
        let (mean, invstd) = match mode {
            BnMode::Eval => (rm[ch], T::of(1.0 / (rv[ch].as_f64() + eps).sqrt())),
            BnMode::Train { update_running } => {
                let (mean, var) = stats[ch];
                if update_running {
                    let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
                    rm[ch] = T::of((1.0 - momentum) * rm[ch].as_f64() + momentum * mean);
                    rv[ch] = T::of((1.0 - momentum) * rv[ch].as_f64() + momentum * unbiased);
                }
                let invstd = T::of(1.0 / (var + eps).sqrt());
                sm[ch] = T::of(mean);
                si[ch] = invstd;
                (T::of(mean), invstd)
            }
        };
        coef.push((mean, invstd, gamma, beta));
    }
    let image = |(yi, xi): (&mut [T], &[T])| {
        let planes = yi
            .chunks_exact_mut(s.hw.max(1))
            .zip(xi.chunks_exact(s.hw.max(1)));
        for ((yp, xp), &(mean, invstd, gamma, beta)) in planes.zip(&coef) {
            batch_norm::bn_plane_apply(xp, yp, mean, invstd, gamma, beta);
        }
    };
    let per = (s.c * s.hw).max(1);
    if b.parallel() {
        y[..len]
            .par_chunks_mut(per)
            .zip(x[..len].par_chunks(per))
            .for_each(image);
    } else {
        y[..len]
            .chunks_mut(per)
            .zip(x[..len].chunks(per))
            .for_each(image);
    }
    Ok(())
}

/// The host batch-norm backward, its sums over this process's examples or (`sync`) over the
/// whole batch of a group.
#[allow(clippy::too_many_arguments)]
fn host_batch_norm_backward<B: HostMemory + Sync, T: Scalar>(
    b: &B,
    x: &B::Buffer<T>,
    dy: &B::Buffer<T>,
    dx: &mut B::Buffer<T>,
    s: BnShape,
    (params, g_off): (&B::Buffer<T>, usize),
    (save_mean, save_invstd): (&B::Buffer<T>, &B::Buffer<T>),
    (grads, dg_off, db_off): (&mut B::Buffer<T>, usize, usize),
    sync: Option<&dyn BnSync>,
) -> Result<()> {
    let (x, dy, dx, p) = (B::host(x), B::host(dy), B::host_mut(dx), B::host(params));
    let (sm, si, gr) = (B::host(save_mean), B::host(save_invstd), B::host_mut(grads));
    let len = s.n * s.c * s.hw;
    need(
        "batch_norm_backward",
        x.len().min(dy.len()).min(dx.len()),
        len,
    )?;
    need(
        "batch_norm_backward: gamma",
        p.len().saturating_sub(g_off),
        s.c,
    )?;
    need(
        "batch_norm_backward: grads",
        gr.len().saturating_sub(dg_off.max(db_off)),
        s.c,
    )?;
    need(
        "batch_norm_backward: statistics",
        sm.len().min(si.len()),
        s.c,
    )?;
    // The sums read channel by channel (in parallel); dx is written image by image. Synced:
    // dx takes the group's sums, dγ and dβ this process's (the gradient reduction adds them).
    let (sums, local, m) = match sync {
        Some(sync) => {
            batch_norm::bn_synced_grad_sums(x, dy, s, (&sm[..s.c], &si[..s.c]), b.parallel(), sync)?
        }
        None => {
            let one = |ch| batch_norm::bn_channel_grad_sums(x, dy, s, ch, sm[ch], si[ch]);
            let sums: Vec<(f64, f64)> = if b.parallel() {
                (0..s.c).into_par_iter().map(one).collect()
            } else {
                (0..s.c).map(one).collect()
            };
            (sums.clone(), sums, (s.n * s.hw) as f64)
        }
    };
    let image = |((dxi, xi), dyi): ((&mut [T], &[T]), &[T])| {
        let hw = s.hw.max(1);
        let planes = dxi
            .chunks_exact_mut(hw)
            .zip(xi.chunks_exact(hw))
            .zip(dyi.chunks_exact(hw));
        for (ch, ((dxp, xp), dyp)) in planes.enumerate() {
            batch_norm::bn_plane_backward(xp, dyp, dxp, m, sm[ch], si[ch], p[g_off + ch], sums[ch]);
        }
    };
    let per = (s.c * s.hw).max(1);
    if b.parallel() {
        dx[..len]
            .par_chunks_mut(per)
            .zip(x[..len].par_chunks(per))
            .zip(dy[..len].par_chunks(per))
            .for_each(image);
    } else {
        dx[..len]
            .chunks_mut(per)
            .zip(x[..len].chunks(per))
            .zip(dy[..len].chunks(per))
            .for_each(image);
    }
    for (ch, &(dg, db)) in local.iter().enumerate() {
        gr[dg_off + ch] = gr[dg_off + ch] + T::of(dg);
        gr[db_off + ch] = gr[db_off + ch] + T::of(db);
    }
    Ok(())
}

impl<B: HostMemory + Sync> TransformerOps for B {
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
    ) -> Result<()> {
        let (x, y, p) = (B::host(x), B::host_mut(y), B::host(params));
        let (mean, rstd) = (B::host_mut(mean), B::host_mut(rstd));
        need("norm_rows", x.len().min(y.len()), rows * d)?;
        need("norm_rows: statistics", mean.len().min(rstd.len()), rows)?;
        need("norm_rows: gamma", p.len().saturating_sub(g_off), d)?;
        if let Some(bo) = b_off {
            need("norm_rows: beta", p.len().saturating_sub(bo), d)?;
        }
        let gamma = &p[g_off..g_off + d];
        let beta = b_off.map(|o| &p[o..o + d]);
        for r in 0..rows {
            let (m, s) = host_tf::norm_row(
                kind,
                &x[r * d..(r + 1) * d],
                &mut y[r * d..(r + 1) * d],
                gamma,
                beta,
                eps,
            );
            mean[r] = m;
            rstd[r] = s;
        }
        Ok(())
    }

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
    ) -> Result<()> {
        let (x, dy, dx, p) = (B::host(x), B::host(dy), B::host_mut(dx), B::host(params));
        let (mean, rstd, g) = (B::host(mean), B::host(rstd), B::host_mut(grads));
        need(
            "norm_rows_backward",
            x.len().min(dy.len()).min(dx.len()),
            rows * d,
        )?;
        need(
            "norm_rows_backward: statistics",
            mean.len().min(rstd.len()),
            rows,
        )?;
        need(
            "norm_rows_backward: gamma",
            p.len().saturating_sub(g_off),
            d,
        )?;
        need(
            "norm_rows_backward: grads",
            g.len().saturating_sub(dg_off.max(db_off.unwrap_or(0))),
            d,
        )?;
        let gamma = &p[g_off..g_off + d];
        let mut dgamma = vec![T::zero(); d];
        let mut dbeta = vec![T::zero(); d];
        for r in 0..rows {
            host_tf::norm_row_backward(
                kind,
                &x[r * d..(r + 1) * d],
                &dy[r * d..(r + 1) * d],
                gamma,
                mean[r],
                rstd[r],
                &mut dx[r * d..(r + 1) * d],
                &mut dgamma,
                db_off.map(|_| &mut dbeta[..]),
            );
        }
        for j in 0..d {
            g[dg_off + j] = g[dg_off + j] + dgamma[j];
        }
        if let Some(bo) = db_off {
            for j in 0..d {
                g[bo + j] = g[bo + j] + dbeta[j];
            }
        }
        Ok(())
    }

    fn attention<T: Scalar>(
        &self,
        qkv: &Self::Buffer<T>,
        s: AttnShape,
        lse: &mut Self::Buffer<T>,
        out: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (qkv, lse, out) = (B::host(qkv), B::host_mut(lse), B::host_mut(out));
        need("attention: qkv", qkv.len(), s.qkv_len())?;
        need("attention: lse", lse.len(), s.lse_len())?;
        need("attention: out", out.len(), s.out_len())?;
        let hd = s.t * s.dh;
        // Each head into its own t × dh rows (heads run in parallel on the CPU backend), then
        // into the model's row layout.
        let heads = per_head(self.parallel(), s.b * s.h, lse, s.t, |bh, lse| {
            let mut o = vec![T::zero(); hd];
            attention::attention_head(&s, qkv, bh / s.h, bh % s.h, &mut o, lse);
            o
        });
        let d = s.d();
        for (bh, o) in heads.iter().enumerate() {
            let (bi, hi) = (bh / s.h, bh % s.h);
            for (ti, row) in o.chunks_exact(s.dh.max(1)).enumerate() {
                let at = (bi * s.t + ti) * d + hi * s.dh;
                out[at..at + s.dh].copy_from_slice(row);
            }
        }
        Ok(())
    }

    fn attention_backward<T: Scalar>(
        &self,
        qkv: &Self::Buffer<T>,
        out: &Self::Buffer<T>,
        lse: &Self::Buffer<T>,
        dout: &Self::Buffer<T>,
        s: AttnShape,
        dqkv: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (qkv, out, lse, dout, dqkv) = (
            B::host(qkv),
            B::host(out),
            B::host(lse),
            B::host(dout),
            B::host_mut(dqkv),
        );
        need(
            "attention_backward: qkv",
            qkv.len().min(dqkv.len()),
            s.qkv_len(),
        )?;
        need(
            "attention_backward: out",
            out.len().min(dout.len()),
            s.out_len(),
        )?;
        need("attention_backward: lse", lse.len(), s.lse_len())?;
        let hd = s.t * s.dh;
        let heads = per_head(self.parallel(), s.b * s.h, &mut [], 0, |bh, _: &mut [T]| {
            let mut g = vec![T::zero(); 3 * hd];
            let l = &lse[bh * s.t..(bh + 1) * s.t];
            attention::attention_head_backward(&s, qkv, out, l, dout, bh / s.h, bh % s.h, &mut g);
            g
        });
        let d = s.d();
        for (bh, g) in heads.iter().enumerate() {
            let (bi, hi) = (bh / s.h, bh % s.h);
            for (part, rows) in g.chunks_exact(hd.max(1)).enumerate() {
                for (ti, row) in rows.chunks_exact(s.dh.max(1)).enumerate() {
                    let at = (bi * s.t + ti) * 3 * d + part * d + hi * s.dh;
                    dqkv[at..at + s.dh].copy_from_slice(row);
                }
            }
        }
        Ok(())
    }

    fn rope<T: Scalar>(
        &self,
        qkv: &mut Self::Buffer<T>,
        s: AttnShape,
        base: f64,
        inverse: bool,
    ) -> Result<()> {
        let q = B::host_mut(qkv);
        need("rope", q.len(), s.qkv_len())?;
        host_tf::rope(&s, q, base, inverse);
        Ok(())
    }

    fn swiglu<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        let (x, y) = (B::host(x), B::host_mut(y));
        need("swiglu: x", x.len(), rows * 2 * f)?;
        need("swiglu: y", y.len(), rows * f)?;
        for r in 0..rows {
            host_tf::swiglu_row(&x[r * 2 * f..(r + 1) * 2 * f], &mut y[r * f..(r + 1) * f]);
        }
        Ok(())
    }

    fn swiglu_backward<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        let (x, dy, dx) = (B::host(x), B::host(dy), B::host_mut(dx));
        need("swiglu_backward", x.len().min(dx.len()), rows * 2 * f)?;
        need("swiglu_backward: dy", dy.len(), rows * f)?;
        for r in 0..rows {
            host_tf::swiglu_row_backward(
                &x[r * 2 * f..(r + 1) * 2 * f],
                &dy[r * f..(r + 1) * f],
                &mut dx[r * 2 * f..(r + 1) * 2 * f],
            );
        }
        Ok(())
    }

    fn embedding<T: Scalar>(
        &self,
        ids: &Self::Buffer<T>,
        n: usize,
        table: &Self::Buffer<T>,
        off: usize,
        vocab: usize,
        d: usize,
        y: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (ids, tab, y) = (B::host(ids), B::host(table), B::host_mut(y));
        need("embedding: ids", ids.len(), n)?;
        need("embedding: table", tab.len().saturating_sub(off), vocab * d)?;
        need("embedding: y", y.len(), n * d)?;
        check_token_ids(&ids[..n], vocab)?;
        for i in 0..n {
            let r = off + ids[i].as_f64() as usize * d;
            y[i * d..(i + 1) * d].copy_from_slice(&tab[r..r + d]);
        }
        Ok(())
    }

    fn embedding_backward<T: Scalar>(
        &self,
        ids: &Self::Buffer<T>,
        n: usize,
        dy: &Self::Buffer<T>,
        d: usize,
        vocab: usize,
        dtable: &mut Self::Buffer<T>,
        off: usize,
    ) -> Result<()> {
        let (ids, dy, g) = (B::host(ids), B::host(dy), B::host_mut(dtable));
        need("embedding_backward: ids", ids.len(), n)?;
        need("embedding_backward: dy", dy.len(), n * d)?;
        need(
            "embedding_backward: table",
            g.len().saturating_sub(off),
            vocab * d,
        )?;
        // Checked before anything is added: an error leaves the gradient untouched.
        check_token_ids(&ids[..n], vocab)?;
        for i in 0..n {
            let r = off + ids[i].as_f64() as usize * d;
            for (a, &b) in g[r..r + d].iter_mut().zip(&dy[i * d..(i + 1) * d]) {
                *a = *a + b;
            }
        }
        Ok(())
    }

    fn add_positions<T: Scalar>(
        &self,
        x: &mut Self::Buffer<T>,
        b: usize,
        t: usize,
        d: usize,
        table: &Self::Buffer<T>,
        off: usize,
    ) -> Result<()> {
        let (x, tab) = (B::host_mut(x), B::host(table));
        need("add_positions: x", x.len(), b * t * d)?;
        need("add_positions: table", tab.len().saturating_sub(off), t * d)?;
        for (k, v) in x[..b * t * d].iter_mut().enumerate() {
            *v = *v + tab[off + k % (t * d)];
        }
        Ok(())
    }

    fn add_positions_backward<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        b: usize,
        t: usize,
        d: usize,
        dtable: &mut Self::Buffer<T>,
        off: usize,
    ) -> Result<()> {
        let (dy, g) = (B::host(dy), B::host_mut(dtable));
        need("add_positions_backward: dy", dy.len(), b * t * d)?;
        need(
            "add_positions_backward: table",
            g.len().saturating_sub(off),
            t * d,
        )?;
        for (k, &v) in dy[..b * t * d].iter().enumerate() {
            let j = off + k % (t * d);
            g[j] = g[j] + v;
        }
        Ok(())
    }

    fn patchify<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        n: usize,
        ch: usize,
        side: usize,
        p: usize,
        out: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (xs, out) = (B::host(x), B::host_mut(out));
        let (g, per) = patch_geometry(side, p, ch)?;
        let t = g * g + 1;
        need("patchify: x", xs.len(), n * ch * side * side)?;
        need("patchify: out", out.len(), n * t * per)?;
        for (i, img) in out[..n * t * per].chunks_exact_mut(t * per).enumerate() {
            img[..per].fill(T::zero());
            for (r, row) in img[per..].chunks_exact_mut(per).enumerate() {
                let (py, px) = (r / g, r % g);
                for (k, v) in row.iter_mut().enumerate() {
                    let (c, yy, xx) = (k / (p * p), k / p % p, k % p);
                    *v = xs[((i * ch + c) * side + py * p + yy) * side + px * p + xx];
                }
            }
        }
        Ok(())
    }
}

impl<B: HostMemory + Sync> LossOps for B {
    fn softmax_xent<T: Scalar>(
        &self,
        logits: &Self::Buffer<T>,
        labels: &Self::Buffer<T>,
        n: usize,
        c: usize,
        eps: f64,
        scale: f64,
        dlogits: &mut Self::Buffer<T>,
    ) -> Result<(f64, usize)> {
        let (z, l, d) = (B::host(logits), B::host(labels), B::host_mut(dlogits));
        need("softmax_xent: logits", z.len().min(d.len()), n * c)?;
        need("softmax_xent: labels", l.len(), n)?;
        let labels = l[..n]
            .iter()
            .map(|v| index_below(v.as_f64(), c).ok_or_else(|| bad_label(v.as_f64(), c)))
            .collect::<Result<Vec<_>>>()?;
        let row = |(i, di): (usize, &mut [T])| {
            xent::softmax_xent_row(&z[i * c..(i + 1) * c], labels[i], eps, scale, di)
        };
        let d = &mut d[..n * c];
        // Rows in parallel, then the losses summed in row order: the same bits either way.
        let rows: Vec<(f64, bool)> = if self.parallel() && n > 1 && c > 0 {
            d.par_chunks_mut(c).enumerate().map(row).collect()
        } else {
            d.chunks_mut(c.max(1)).enumerate().map(row).collect()
        };
        // A NaN or infinite logit always makes its row's loss non-finite, so the logits are
        // scanned only then (not on every step) to tell that apart from an overflowing loss.
        if rows.iter().any(|r| !r.0.is_finite()) && z[..n * c].iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "logits".into(),
            });
        }
        let loss = rows.iter().fold(0.0, |acc, r| acc + r.0);
        let correct = rows.iter().filter(|r| r.1).count();
        Ok((loss, correct))
    }

    fn sample_labels<T: Scalar>(
        &self,
        logits: &Self::Buffer<T>,
        n: usize,
        c: usize,
        uniforms: &Self::Buffer<T>,
        labels: &mut Self::Buffer<T>,
    ) -> Result<()> {
        let (z, u, l) = (B::host(logits), B::host(uniforms), B::host_mut(labels));
        need("sample_labels: logits", z.len(), n * c)?;
        need("sample_labels", u.len().min(l.len()), n)?;
        for i in 0..n {
            l[i] = T::of(host::sample_row(&z[i * c..(i + 1) * c], u[i].as_f64()) as f64);
        }
        Ok(())
    }

    fn dropout<T: Scalar>(
        &self,
        x: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        len: usize,
        p: f64,
        seed: u64,
    ) -> Result<()> {
        let (x, y) = (B::host(x), B::host_mut(y));
        need("dropout", x.len().min(y.len()), len)?;
        let s = T::of(1.0 / (1.0 - p));
        for i in 0..len {
            y[i] = if host::dropout_keep(seed, i as u64, p) {
                x[i] * s
            } else {
                T::zero()
            };
        }
        Ok(())
    }

    fn dropout_backward<T: Scalar>(
        &self,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        len: usize,
        p: f64,
        seed: u64,
    ) -> Result<()> {
        self.dropout(dy, dx, len, p, seed)
    }
}

/// `f(pair, its chunk of `per` values of `chunks`)` for each of the `heads` (sequence, head)
/// pairs, in parallel when asked; the results in pair order. `per = 0`: every pair gets an
/// empty chunk.
fn per_head<T: Send, R: Send>(
    parallel: bool,
    heads: usize,
    chunks: &mut [T],
    per: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    if per == 0 {
        let run = |bh: usize| f(bh, &mut []);
        return if parallel {
            (0..heads).into_par_iter().map(run).collect()
        } else {
            (0..heads).map(run).collect()
        };
    }
    let chunks = &mut chunks[..heads * per];
    if parallel {
        chunks
            .par_chunks_mut(per)
            .enumerate()
            .map(|(bh, c)| f(bh, c))
            .collect()
    } else {
        chunks
            .chunks_mut(per)
            .enumerate()
            .map(|(bh, c)| f(bh, c))
            .collect()
    }
}

/// Index (in the image) and value of the first maximum of window `(oy, ox)`; padding counts
/// as −∞ (PyTorch's max pooling).
fn max_window<T: Scalar>(xi: &[T], g: &ConvGeom, oy: usize, ox: usize) -> (Option<usize>, T) {
    let mut best = (None, T::neg_infinity());
    for ky in 0..g.k {
        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
        if iy < 0 || iy as usize >= g.h {
            continue;
        }
        for kx in 0..g.k {
            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
            if ix < 0 || ix as usize >= g.w {
                continue;
            }
            let at = iy as usize * g.w + ix as usize;
            if best.0.is_none() || xi[at] > best.1 {
                best = (Some(at), xi[at]);
            }
        }
    }
    best
}
