//! The image-network operations on device backends: GEMM, bias, convolution, activations,
//! batch norm, pooling and scaling, as launches of the kernels in `kernels/nn_cnn.cl`.
//!
//! Every sum runs in a fixed order in one work-item or through a fixed tree in one work-group,
//! never through atomics, so results are the same from run to run. Convolutions unfold a chunk
//! of images at a time into a scratch buffer of at most [`SCRATCH_ELEMS`] values, so that one
//! large matrix product covers the chunk.

use ire_core::device::KernelArg::{Index, Real, U32};
use ire_core::device::{DeviceBackend, DeviceBuffer, KernelArg, Runtime, groups_for};
use ire_core::{Backend, Error, GemmShape, Result, Scalar};

use super::kernels::{NN_KERNELS, WG};
use crate::nn::batch_norm::{BnMode, BnShape, BnState};
use crate::nn::conv::ConvGeom;
use crate::nn::ops::{ConvNetOps, need};

/// Values in one convolution scratch buffer (unfolded columns, their gradient): bounds the
/// memory an op takes while giving the GEMM enough columns to fill a GPU.
pub(crate) const SCRATCH_ELEMS: usize = 1 << 24;

/// Side of the square C tile of one GEMM work-group, and the k-step (`CNN_TM`, `CNN_TK`).
const TILE: usize = 64;
const TILE_K: usize = 16;
/// A GEMM with fewer tiles than this is split over k (deterministically: by shape only)...
const SPLIT_GROUPS: usize = 128;
/// ...into slices of at least this many values of k.
const SPLIT_MIN_K: usize = 512;
/// Rows summed directly (bit for bit as the host) by the bias gradient; more go through
/// partial sums of this many rows.
const BIAS_ROWS: usize = 256;

/// `v` as a 32-bit kernel parameter, or an error naming what is too large.
fn u32_of<R: Runtime>(dev: &DeviceBackend<R>, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Unsupported {
        backend: dev.name().into(),
        what: format!("{what} of {v} values (the kernels index it in 32 bits)"),
    })
}

/// A window that fits the padded image, with a stride: what `ConvGeom::oh`/`ow` assume.
fn check_geom<R: Runtime>(dev: &DeviceBackend<R>, what: &str, g: &ConvGeom) -> Result<()> {
    if g.k == 0 || g.stride == 0 || g.k > g.h + 2 * g.pad || g.k > g.w + 2 * g.pad {
        return Err(Error::Unsupported {
            backend: dev.name().into(),
            what: format!(
                "{what}: a {}×{} window with stride {} and padding {} on a {}×{} image",
                g.k, g.k, g.stride, g.pad, g.h, g.w
            ),
        });
    }
    // Padded coordinates and positions in a plane are 32-bit in the kernels.
    u32_of(dev, what, (g.h + 2 * g.pad).max(g.w + 2 * g.pad))?;
    u32_of(dev, what, g.c_in * g.h * g.w)?;
    Ok(())
}

/// Slices of k for a GEMM of `tiles` tiles (1: no split).
fn k_slices(tiles: usize, k: usize) -> usize {
    if tiles >= SPLIT_GROUPS || k < 2 * SPLIT_MIN_K {
        return 1;
    }
    SPLIT_GROUPS.div_ceil(tiles).min(k / SPLIT_MIN_K).max(1)
}

/// One launch of `cnn_gemm`: `strides` = `[ar, ac, br, bc]`, `shape` =
/// `[m, n, k, kslice, tiles_n, tiles]`, `target` = `(C, c_off, α, β)`.
#[allow(clippy::too_many_arguments)]
fn gemm_tiles<R: Runtime, T: Scalar>(
    dev: &DeviceBackend<R>,
    groups: usize,
    a: &DeviceBuffer<R, T>,
    a_off: usize,
    b: &DeviceBuffer<R, T>,
    b_off: usize,
    strides: [usize; 4],
    shape: [usize; 6],
    target: (&mut DeviceBuffer<R, T>, usize, f64, f64),
) -> Result<()> {
    let [ar, ac, br, bc] = strides;
    let (c, c_off, alpha, beta) = target;
    let mut args: Vec<KernelArg<'_, R::Mem>> = vec![
        a.input(),
        Index(a_off),
        Index(ar),
        Index(ac),
        b.input(),
        Index(b_off),
        Index(br),
        Index(bc),
        c.output(),
        Index(c_off),
    ];
    args.extend(shape.map(Index));
    args.extend([Real(alpha), Real(beta)]);
    dev.launch::<T>(&NN_KERNELS, "cnn_gemm", groups, &args)
}

/// The geometry as the convolution kernels' leading 32-bit parameters
/// (`ch, h, w, k, stride, pad, oh, ow`).
fn geom_args<'a, M>(g: &ConvGeom) -> [KernelArg<'a, M>; 8] {
    // check_geom has bounded every one of these by 32 bits.
    let u = |v: usize| U32(v as u32);
    [
        u(g.c_in),
        u(g.h),
        u(g.w),
        u(g.k),
        u(g.stride),
        u(g.pad),
        u(g.oh()),
        u(g.ow()),
    ]
}

/// Images per chunk of a convolution, checking that a chunk's indices fit in 32 bits.
fn conv_chunk<R: Runtime>(
    dev: &DeviceBackend<R>,
    what: &str,
    n: usize,
    g: &ConvGeom,
    scratch: usize,
) -> Result<usize> {
    let per_img = g.col_rows() * g.col_cols();
    let nb = (scratch / per_img.max(1)).clamp(1, n.max(1));
    u32_of(dev, what, per_img * nb)?;
    u32_of(dev, what, g.in_size() * nb)?;
    Ok(nb)
}

/// Unfolds images `i0 .. i0 + nbc` of `x` into `cols` (the chunk layout of `nn_cnn.cl`).
fn im2col<R: Runtime, T: Scalar>(
    dev: &DeviceBackend<R>,
    x: &DeviceBuffer<R, T>,
    i0: usize,
    nbc: usize,
    g: &ConvGeom,
    cols: &mut DeviceBuffer<R, T>,
) -> Result<()> {
    let ncols = nbc * g.col_cols();
    let total = g.col_rows() * ncols;
    let mut args: Vec<KernelArg<'_, R::Mem>> =
        vec![x.input(), Index(i0 * g.in_size()), cols.output()];
    args.extend(geom_args(g));
    args.extend([U32(ncols as u32), U32(total as u32)]);
    dev.launch::<T>(&NN_KERNELS, "cnn_im2col", groups_for(total), &args)
}

/// `out[b, a, :] = in[a, b, :]` for an `na × nb × np` array at the given offsets.
#[allow(clippy::too_many_arguments)]
fn swap_outer<R: Runtime, T: Scalar>(
    dev: &DeviceBackend<R>,
    src: &DeviceBuffer<R, T>,
    src_off: usize,
    dst: &mut DeviceBuffer<R, T>,
    dst_off: usize,
    na: usize,
    nb: usize,
    np: usize,
) -> Result<()> {
    let total = na * nb * np;
    dev.launch::<T>(
        &NN_KERNELS,
        "cnn_swap_outer",
        groups_for(total),
        &[
            src.input(),
            Index(src_off),
            dst.output(),
            Index(dst_off),
            Index(na),
            Index(nb),
            Index(np),
            Index(total),
        ],
    )
}

/// [`conv2d`] with chunks of at most `scratch` unfolded values (unless one image has more).
#[allow(clippy::too_many_arguments)]
fn conv2d_in<R: Runtime, T: Scalar>(
    dev: &DeviceBackend<R>,
    x: &DeviceBuffer<R, T>,
    n: usize,
    g: &ConvGeom,
    w: &DeviceBuffer<R, T>,
    w_off: usize,
    y: &mut DeviceBuffer<R, T>,
    scratch: usize,
) -> Result<()> {
    check_geom(dev, "conv2d", g)?;
    need("conv2d: x", dev.len(x), n * g.in_size())?;
    need(
        "conv2d: w",
        dev.len(w).saturating_sub(w_off),
        g.weight_size(),
    )?;
    need("conv2d: y", dev.len(y), n * g.out_size())?;
    if n * g.out_size() == 0 {
        return Ok(());
    }
    let (rows, p) = (g.col_rows(), g.col_cols());
    let nb = conv_chunk(dev, "conv2d: a chunk", n, g, scratch)?;
    let direct = g.k == 1 && g.stride == 1 && g.pad == 0;
    // A single image needs neither unfolding (1×1) nor reordering of its output.
    let mut cols = if direct && nb == 1 {
        None
    } else {
        Some(dev.scratch::<T>(rows * nb * p)?)
    };
    let mut tmp = if nb > 1 {
        Some(dev.scratch::<T>(g.c_out * nb * p)?)
    } else {
        None
    };
    let mut i0 = 0;
    while i0 < n {
        let nbc = nb.min(n - i0);
        if let Some(cols) = cols.as_mut() {
            im2col(dev, x, i0, nbc, g, cols)?;
        }
        let (bsrc, boff) = match cols.as_ref() {
            Some(c) => (&**c, 0),
            None => (x, i0 * g.in_size()),
        };
        // Y_chunk (c_out × nbc·P) = W · cols.
        let gm = GemmShape {
            trans_a: false,
            trans_b: false,
            m: g.c_out,
            n: nbc * p,
            k: rows,
        };
        match tmp.as_mut() {
            Some(t) if nbc > 1 => {
                dev.gemm(gm, T::one(), w, w_off, bsrc, boff, T::zero(), t, 0)?;
                swap_outer(dev, t, 0, y, i0 * g.out_size(), g.c_out, nbc, p)?;
            }
            _ => dev.gemm(
                gm,
                T::one(),
                w,
                w_off,
                bsrc,
                boff,
                T::zero(),
                y,
                i0 * g.out_size(),
            )?,
        }
        i0 += nbc;
    }
    Ok(())
}

/// [`conv2d_backward`] with chunks of at most `scratch` unfolded values; `out` is
/// `(dx, dw, dw_off)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn conv2d_backward_in<R: Runtime, T: Scalar>(
    dev: &DeviceBackend<R>,
    x: &DeviceBuffer<R, T>,
    n: usize,
    g: &ConvGeom,
    w: &DeviceBuffer<R, T>,
    w_off: usize,
    dy: &DeviceBuffer<R, T>,
    out: (
        Option<&mut DeviceBuffer<R, T>>,
        &mut DeviceBuffer<R, T>,
        usize,
    ),
    scratch: usize,
) -> Result<()> {
    let (mut dx, dw, dw_off) = out;
    check_geom(dev, "conv2d_backward", g)?;
    need("conv2d_backward: x", dev.len(x), n * g.in_size())?;
    need(
        "conv2d_backward: w",
        dev.len(w).saturating_sub(w_off),
        g.weight_size(),
    )?;
    need("conv2d_backward: dy", dev.len(dy), n * g.out_size())?;
    if let Some(d) = dx.as_deref() {
        need("conv2d_backward: dx", dev.len(d), n * g.in_size())?;
    }
    need(
        "conv2d_backward: dw",
        dev.len(dw).saturating_sub(dw_off),
        g.weight_size(),
    )?;
    if n == 0 {
        return Ok(());
    }
    let (rows, p) = (g.col_rows(), g.col_cols());
    let nb = conv_chunk(dev, "conv2d_backward: a chunk", n, g, scratch)?;
    let direct = g.k == 1 && g.stride == 1 && g.pad == 0;
    let single = direct && nb == 1;
    let mut cols = if single {
        None
    } else {
        Some(dev.scratch::<T>(rows * nb * p)?)
    };
    let mut dyw = if nb > 1 {
        Some(dev.scratch::<T>(g.c_out * nb * p)?)
    } else {
        None
    };
    let mut dcols = if dx.is_some() && !single {
        Some(dev.scratch::<T>(rows * nb * p)?)
    } else {
        None
    };
    let mut i0 = 0;
    while i0 < n {
        let nbc = nb.min(n - i0);
        let ncols = nbc * p;
        if let Some(cols) = cols.as_mut() {
            im2col(dev, x, i0, nbc, g, cols)?;
        }
        let (bsrc, boff) = match cols.as_ref() {
            Some(c) => (&**c, 0),
            None => (x, i0 * g.in_size()),
        };
        // dY of the chunk as c_out × nbc·P (the columns' order).
        let (asrc, aoff) = match dyw.as_mut() {
            Some(t) if nbc > 1 => {
                swap_outer(dev, dy, i0 * g.out_size(), t, 0, nbc, g.c_out, p)?;
                (&**t, 0)
            }
            _ => (dy, i0 * g.out_size()),
        };
        // dW += dY · colsᵀ.
        let gw = GemmShape {
            trans_a: false,
            trans_b: true,
            m: g.c_out,
            n: rows,
            k: ncols,
        };
        dev.gemm(gw, T::one(), asrc, aoff, bsrc, boff, T::one(), dw, dw_off)?;
        if let Some(dx) = dx.as_deref_mut() {
            // dcols = Wᵀ · dY, folded back by a gather.
            let gx = GemmShape {
                trans_a: true,
                trans_b: false,
                m: rows,
                n: ncols,
                k: g.c_out,
            };
            match dcols.as_mut() {
                Some(dc) => {
                    dev.gemm(gx, T::one(), w, w_off, asrc, aoff, T::zero(), dc, 0)?;
                    let total = nbc * g.in_size();
                    let mut args: Vec<KernelArg<'_, R::Mem>> =
                        vec![dc.input(), dx.output(), Index(i0 * g.in_size())];
                    args.extend(geom_args(g));
                    args.extend([U32(ncols as u32), U32(total as u32)]);
                    dev.launch::<T>(&NN_KERNELS, "cnn_col2im", groups_for(total), &args)?;
                }
                None => dev.gemm(
                    gx,
                    T::one(),
                    w,
                    w_off,
                    asrc,
                    aoff,
                    T::zero(),
                    dx,
                    i0 * g.in_size(),
                )?,
            }
        }
        i0 += nbc;
    }
    Ok(())
}

/// One work-item per element: `kernel(a, b, n)` or `kernel(a, b, c, n)`.
fn elementwise<R: Runtime, T: Scalar>(
    dev: &DeviceBackend<R>,
    kernel: &'static str,
    len: usize,
    args: Vec<KernelArg<'_, R::Mem>>,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut args = args;
    args.push(Index(len));
    dev.launch::<T>(&NN_KERNELS, kernel, groups_for(len), &args)
}

/// `1/√2` and `1/√(2π)` as the host computes them.
fn gelu_consts() -> (f64, f64) {
    let inv_sqrt2 = std::f64::consts::FRAC_1_SQRT_2;
    (
        inv_sqrt2,
        0.5 * std::f64::consts::FRAC_2_SQRT_PI * inv_sqrt2,
    )
}

/// The pooling kernels' 32-bit geometry (`h, w, k, stride, pad, oh, ow`).
fn pool_args<'a, M>(g: &ConvGeom) -> Vec<KernelArg<'a, M>> {
    geom_args(g).into_iter().skip(1).collect()
}

#[cfg(all(test, feature = "opencl"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::rng::Rng;
    use ire_backend_opencl::OpenClBackend;
    use ire_core::Backend;

    /// Splitting a batch into chunks (of one image, of two, or none) changes no output value
    /// but the order in which dW sums over images.
    #[test]
    fn convolution_chunks_agree() {
        let Some(dev) = ire_backend_opencl::optional().unwrap() else {
            println!("skipped convolution_chunks_agree: no OpenCL device");
            return;
        };
        let mut rng = Rng::new(11);
        let mut rand = |len: usize| -> Vec<f64> { (0..len).map(|_| rng.normal()).collect() };
        for (k, stride, pad) in [(3, 2, 1), (1, 1, 0)] {
            let g = ConvGeom {
                c_in: 3,
                h: 6,
                w: 5,
                c_out: 4,
                k,
                stride,
                pad,
            };
            let n = 5;
            let x = dev.alloc_from(&rand(n * g.in_size())).unwrap();
            let w = dev.alloc_from(&rand(g.weight_size())).unwrap();
            let dy = dev.alloc_from(&rand(n * g.out_size())).unwrap();
            let dw0 = rand(g.weight_size());
            let per_img = g.col_rows() * g.col_cols();
            let mut outs = Vec::new();
            for scratch in [per_img, 2 * per_img, SCRATCH_ELEMS] {
                let mut y = dev.alloc::<f64>(n * g.out_size()).unwrap();
                conv2d_in(&dev, &x, n, &g, &w, 0, &mut y, scratch).unwrap();
                let mut dx = dev.alloc::<f64>(n * g.in_size()).unwrap();
                let mut dw = dev.alloc_from(&dw0).unwrap();
                let out = (Some(&mut dx), &mut dw, 0);
                conv2d_backward_in(&dev, &x, n, &g, &w, 0, &dy, out, scratch).unwrap();
                let v = |b: &<OpenClBackend as Backend>::Buffer<f64>| dev.to_vec(b).unwrap();
                outs.push((v(&y), v(&dx), v(&dw)));
            }
            let (y0, dx0, dw0) = &outs[2];
            for (y, dx, dw) in &outs[..2] {
                assert_eq!(y, y0, "k{k}: y");
                assert_eq!(dx, dx0, "k{k}: dx");
                for (a, b) in dw.iter().zip(dw0) {
                    assert!(
                        (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                        "k{k}: dw {a} vs {b}"
                    );
                }
            }
        }
    }
}

impl<R: Runtime> ConvNetOps for DeviceBackend<R> {
    #[allow(clippy::too_many_arguments)]
    fn gemm<T: Scalar>(
        &self,
        g: GemmShape,
        alpha: T,
        a: &DeviceBuffer<R, T>,
        a_off: usize,
        b: &DeviceBuffer<R, T>,
        b_off: usize,
        beta: T,
        c: &mut DeviceBuffer<R, T>,
        c_off: usize,
    ) -> Result<()> {
        let (na, nb, nc) = g.sizes();
        need("gemm: A", self.len(a).saturating_sub(a_off), na)?;
        need("gemm: B", self.len(b).saturating_sub(b_off), nb)?;
        need("gemm: C", self.len(c).saturating_sub(c_off), nc)?;
        if nc == 0 {
            return Ok(());
        }
        let shape = GemmShape {
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            m: g.m,
            n: g.n,
            k: g.k,
        };
        if self.vendor_gemm(shape, alpha, a, a_off, b, b_off, beta, c, c_off)? {
            return Ok(());
        }
        let ((ar, ac), (br, bc)) = g.strides();
        let tiles_n = g.n.div_ceil(TILE);
        let tiles = g.m.div_ceil(TILE) * tiles_n;
        let slices = k_slices(tiles, g.k);
        let kslice = if slices > 1 {
            g.k.div_ceil(slices).next_multiple_of(TILE_K)
        } else {
            g.k
        };
        let slices = if slices > 1 { g.k.div_ceil(kslice) } else { 1 };
        let (alpha, beta) = (alpha.as_f64(), beta.as_f64());
        let strides = [ar, ac, br, bc];
        let shape = [g.m, g.n, g.k, kslice, tiles_n, tiles];
        if slices == 1 {
            let target = (c, c_off, alpha, beta);
            return gemm_tiles(self, tiles, a, a_off, b, b_off, strides, shape, target);
        }
        // Each slice's plain sum, then the slices added in order with α and β.
        let mut part = self.scratch::<T>(slices * nc)?;
        let target = (&mut *part, 0, 1.0, 0.0);
        gemm_tiles(
            self,
            slices * tiles,
            a,
            a_off,
            b,
            b_off,
            strides,
            shape,
            target,
        )?;
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_gemm_reduce",
            groups_for(nc),
            &[
                part.input(),
                Index(slices),
                Index(nc),
                c.output(),
                Index(c_off),
                Real(alpha),
                Real(beta),
            ],
        )
    }

    fn add_row_bias<T: Scalar>(
        &self,
        y: &mut DeviceBuffer<R, T>,
        rows: usize,
        cols: usize,
        bias: &DeviceBuffer<R, T>,
        b_off: usize,
    ) -> Result<()> {
        need("add_row_bias: y", self.len(y), rows * cols)?;
        need(
            "add_row_bias: bias",
            self.len(bias).saturating_sub(b_off),
            cols,
        )?;
        let len = rows * cols;
        if len == 0 {
            return Ok(());
        }
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_add_row_bias",
            groups_for(len),
            &[
                y.output(),
                bias.input(),
                Index(b_off),
                Index(cols),
                Index(len),
            ],
        )
    }

    fn row_bias_grad<T: Scalar>(
        &self,
        dy: &DeviceBuffer<R, T>,
        rows: usize,
        cols: usize,
        db: &mut DeviceBuffer<R, T>,
        db_off: usize,
    ) -> Result<()> {
        need("row_bias_grad: dy", self.len(dy), rows * cols)?;
        need(
            "row_bias_grad: db",
            self.len(db).saturating_sub(db_off),
            cols,
        )?;
        if rows * cols == 0 {
            return Ok(());
        }
        let acc = |src: &DeviceBuffer<R, T>, n: usize, db: &mut DeviceBuffer<R, T>| {
            self.launch::<T>(
                &NN_KERNELS,
                "cnn_col_sum_acc",
                groups_for(cols),
                &[
                    src.input(),
                    Index(n),
                    Index(cols),
                    db.output(),
                    Index(db_off),
                ],
            )
        };
        if rows <= BIAS_ROWS {
            return acc(dy, rows, db);
        }
        // Many rows: partial sums of BIAS_ROWS rows spread the work over more work-groups.
        let blocks = rows.div_ceil(BIAS_ROWS);
        let col_blocks = cols.div_ceil(WG);
        let mut part = self.scratch::<T>(blocks * cols)?;
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_col_sum_parts",
            blocks * col_blocks,
            &[
                dy.input(),
                Index(rows),
                Index(cols),
                Index(BIAS_ROWS),
                Index(col_blocks),
                part.output(),
            ],
        )?;
        acc(&part, blocks, db)
    }

    fn conv2d<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        n: usize,
        g: &ConvGeom,
        w: &DeviceBuffer<R, T>,
        w_off: usize,
        y: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        conv2d_in(self, x, n, g, w, w_off, y, SCRATCH_ELEMS)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        n: usize,
        g: &ConvGeom,
        w: &DeviceBuffer<R, T>,
        w_off: usize,
        dy: &DeviceBuffer<R, T>,
        dx: Option<&mut DeviceBuffer<R, T>>,
        dw: &mut DeviceBuffer<R, T>,
        dw_off: usize,
    ) -> Result<()> {
        let out = (dx, dw, dw_off);
        conv2d_backward_in(self, x, n, g, w, w_off, dy, out, SCRATCH_ELEMS)
    }

    fn relu<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        len: usize,
    ) -> Result<()> {
        need("relu", self.len(x).min(self.len(y)), len)?;
        elementwise::<R, T>(self, "cnn_relu", len, vec![x.input(), y.output()])
    }

    fn relu_backward<T: Scalar>(
        &self,
        y: &DeviceBuffer<R, T>,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        len: usize,
    ) -> Result<()> {
        need(
            "relu_backward",
            self.len(y).min(self.len(dy)).min(self.len(dx)),
            len,
        )?;
        elementwise::<R, T>(
            self,
            "cnn_relu_backward",
            len,
            vec![y.input(), dy.input(), dx.output()],
        )
    }

    fn gelu<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        len: usize,
    ) -> Result<()> {
        need("gelu", self.len(x).min(self.len(y)), len)?;
        let (c1, _) = gelu_consts();
        elementwise::<R, T>(self, "cnn_gelu", len, vec![x.input(), y.output(), Real(c1)])
    }

    fn gelu_backward<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        len: usize,
    ) -> Result<()> {
        need(
            "gelu_backward",
            self.len(x).min(self.len(dy)).min(self.len(dx)),
            len,
        )?;
        let (c1, c2) = gelu_consts();
        elementwise::<R, T>(
            self,
            "cnn_gelu_backward",
            len,
            vec![x.input(), dy.input(), dx.output(), Real(c1), Real(c2)],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        s: BnShape,
        params: &DeviceBuffer<R, T>,
        g_off: usize,
        b_off: usize,
        st: BnState<'_, Self, T>,
        mode: BnMode,
        momentum: f64,
        eps: f64,
    ) -> Result<()> {
        let BnState {
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        } = st;
        let len = s.n * s.c * s.hw;
        need("batch_norm: x", self.len(x).min(self.len(y)), len)?;
        need(
            "batch_norm: gamma",
            self.len(params).saturating_sub(g_off),
            s.c,
        )?;
        need(
            "batch_norm: beta",
            self.len(params).saturating_sub(b_off),
            s.c,
        )?;
        need(
            "batch_norm: statistics",
            self.len(running_mean)
                .min(self.len(running_var))
                .min(self.len(save_mean))
                .min(self.len(save_invstd)),
            s.c,
        )?;
        if len == 0 {
            return Ok(());
        }
        let (mean, second, eval) = match mode {
            BnMode::Eval => (&*running_mean, &*running_var, 1),
            BnMode::Train { update_running } => {
                self.launch::<T>(
                    &NN_KERNELS,
                    "cnn_bn_stats",
                    s.c,
                    &[
                        x.input(),
                        Index(s.n),
                        Index(s.c),
                        Index(s.hw),
                        save_mean.output(),
                        save_invstd.output(),
                        running_mean.output(),
                        running_var.output(),
                        Real(eps),
                        Real(momentum),
                        Real(1.0 - momentum),
                        U32(update_running as u32),
                    ],
                )?;
                (&*save_mean, &*save_invstd, 0)
            }
        };
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_bn_apply",
            groups_for(len),
            &[
                x.input(),
                y.output(),
                mean.input(),
                second.input(),
                params.input(),
                Index(g_off),
                Index(b_off),
                Real(eps),
                U32(eval),
                Index(s.c),
                Index(s.hw),
                Index(len),
            ],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        s: BnShape,
        params: &DeviceBuffer<R, T>,
        g_off: usize,
        save_mean: &DeviceBuffer<R, T>,
        save_invstd: &DeviceBuffer<R, T>,
        grads: &mut DeviceBuffer<R, T>,
        dg_off: usize,
        db_off: usize,
    ) -> Result<()> {
        let len = s.n * s.c * s.hw;
        need(
            "batch_norm_backward",
            self.len(x).min(self.len(dy)).min(self.len(dx)),
            len,
        )?;
        need(
            "batch_norm_backward: gamma",
            self.len(params).saturating_sub(g_off),
            s.c,
        )?;
        need(
            "batch_norm_backward: grads",
            self.len(grads).saturating_sub(dg_off.max(db_off)),
            s.c,
        )?;
        need(
            "batch_norm_backward: statistics",
            self.len(save_mean).min(self.len(save_invstd)),
            s.c,
        )?;
        if len == 0 {
            return Ok(());
        }
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_bn_backward",
            s.c,
            &[
                x.input(),
                dy.input(),
                dx.output(),
                Index(s.n),
                Index(s.c),
                Index(s.hw),
                params.input(),
                Index(g_off),
                save_mean.input(),
                save_invstd.input(),
                grads.output(),
                Index(dg_off),
                Index(db_off),
            ],
        )
    }

    fn global_avg_pool<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        y: &mut DeviceBuffer<R, T>,
        s: BnShape,
    ) -> Result<()> {
        need("global_avg_pool: x", self.len(x), s.n * s.c * s.hw)?;
        need("global_avg_pool: y", self.len(y), s.n * s.c)?;
        let nc = s.n * s.c;
        if nc * s.hw == 0 {
            return Ok(());
        }
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_avg_pool",
            groups_for(nc),
            &[
                x.input(),
                y.output(),
                Index(s.hw),
                Index(nc),
                Real(1.0 / s.hw as f64),
            ],
        )
    }

    fn global_avg_pool_backward<T: Scalar>(
        &self,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
        s: BnShape,
    ) -> Result<()> {
        need("global_avg_pool_backward: dy", self.len(dy), s.n * s.c)?;
        need(
            "global_avg_pool_backward: dx",
            self.len(dx),
            s.n * s.c * s.hw,
        )?;
        let inv = 1.0 / s.hw.max(1) as f64;
        elementwise::<R, T>(
            self,
            "cnn_avg_pool_backward",
            s.n * s.c * s.hw,
            vec![dy.input(), dx.output(), Index(s.hw), Real(inv)],
        )
    }

    fn max_pool2d<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        n: usize,
        g: &ConvGeom,
        y: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        check_geom(self, "max_pool2d", g)?;
        let (oh, ow) = (g.oh(), g.ow());
        need("max_pool2d: x", self.len(x), n * g.in_size())?;
        need("max_pool2d: y", self.len(y), n * g.c_in * oh * ow)?;
        let total = n * g.c_in * oh * ow;
        if total == 0 {
            return Ok(());
        }
        let mut args: Vec<KernelArg<'_, R::Mem>> = vec![x.input(), y.output()];
        args.extend(pool_args(g));
        args.extend([Index(total), Real(f64::NEG_INFINITY)]);
        self.launch::<T>(&NN_KERNELS, "cnn_max_pool", groups_for(total), &args)
    }

    fn max_pool2d_backward<T: Scalar>(
        &self,
        x: &DeviceBuffer<R, T>,
        n: usize,
        g: &ConvGeom,
        dy: &DeviceBuffer<R, T>,
        dx: &mut DeviceBuffer<R, T>,
    ) -> Result<()> {
        check_geom(self, "max_pool2d_backward", g)?;
        let (oh, ow) = (g.oh(), g.ow());
        need(
            "max_pool2d_backward",
            self.len(x).min(self.len(dx)),
            n * g.in_size(),
        )?;
        need(
            "max_pool2d_backward: dy",
            self.len(dy),
            n * g.c_in * oh * ow,
        )?;
        let total = n * g.in_size();
        if total == 0 {
            return Ok(());
        }
        let mut args: Vec<KernelArg<'_, R::Mem>> = vec![x.input(), dy.input(), dx.output()];
        args.extend(pool_args(g));
        args.extend([Index(total), Real(f64::NEG_INFINITY)]);
        self.launch::<T>(
            &NN_KERNELS,
            "cnn_max_pool_backward",
            groups_for(total),
            &args,
        )
    }

    fn scale<T: Scalar>(&self, x: &mut DeviceBuffer<R, T>, s: T) -> Result<()> {
        let len = self.len(x);
        elementwise::<R, T>(self, "cnn_scale", len, vec![x.output(), Real(s.as_f64())])
    }
}
