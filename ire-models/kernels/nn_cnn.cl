/* Image-network kernels (GEMM, bias, convolution, activations, batch norm, pooling), in the
 * portable dialect of ire-core/kernels/ire_ops.cl: the host prepends the dtype header and the
 * OpenCL or CUDA prelude. Every launch has work-groups of exactly 256 work-items (WG).
 *
 * Each kernel spells the host formula of ire-models/src/nn/host.rs and ops.rs in the same
 * order of operations; sums run in a fixed order (no atomics), so results are the same from
 * run to run. Names carry a `cnn_` prefix: this file shares one program with nn_tf.cl. */

#define WG 256

/* erfc: Φ(x) = erfc(−x/√2)/2 keeps its relative accuracy in the lower tail in f32, where
 * 1 + erf(x/√2) cancels. Not in the prelude; both dialects have it. */
#ifdef __OPENCL_VERSION__
#define CNN_ERFC(x) erfc(x)
#else
#ifdef IRE_F64
#define CNN_ERFC(x) erfc(x)
#else
#define CNN_ERFC(x) erfcf(x)
#endif
#endif

/* a / b, through 32-bit division when both fit (64-bit division is slow on GPUs). */
DEVICE_FN INDEX cnn_div(INDEX a, INDEX b) {
    if (((a | b) >> 32) == 0) return (INDEX)((U32)a / (U32)b);
    return a / b;
}

/* Sum of `v` over the work-group by a fixed tree in the local array `red`; every work-item
 * gets the total in `out`. */
#define CNN_GROUP_SUM(red, v, out)                                             \
    do {                                                                       \
        red[LOCAL_ID] = (v);                                                   \
        BARRIER();                                                             \
        for (U32 s_ = WG / 2; s_ > 0; s_ >>= 1) {                              \
            if (LOCAL_ID < s_) red[LOCAL_ID] = red[LOCAL_ID] + red[LOCAL_ID + s_]; \
            BARRIER();                                                         \
        }                                                                      \
        (out) = red[0];                                                        \
        BARRIER();                                                             \
    } while (0)

/* ---------------------------------------------------------------- GEMM
 * C = α·op(A)·op(B) + β·C, row-major, element (i, p) of op(A) at a[a_off + i·ar + p·ac] and
 * (p, j) of op(B) at b[b_off + p·br + j·bc]. One work-group per 64×64 tile of C (per k-slice);
 * each work-item owns a 4×4 block (rows ty + 16r, columns tx + 16c). Each output sums over p
 * in increasing order from 0, as the host's naive loop does; padding past the edges adds
 * 0·0 = +0, which changes no sum that starts from +0.
 *
 * Split over k (`kslice < k`): work-group g = (slice, tile) writes the plain sum of its slice
 * to c[c_off + slice·m·n + …] (α = 1, β = 0 on the host side) and cnn_gemm_reduce adds the
 * slices in order. */
#define CNN_TM 64
#define CNN_TK 16

KERNEL void cnn_gemm(GLOBAL const T* a, INDEX a_off, INDEX ar, INDEX ac, GLOBAL const T* b,
                     INDEX b_off, INDEX br, INDEX bc, GLOBAL T* c, INDEX c_off, INDEX m, INDEX n,
                     INDEX k, INDEX kslice, INDEX tiles_n, INDEX tiles, T alpha, T beta) {
    LOCAL_ARRAY(T, as_, CNN_TK * CNN_TM);
    LOCAL_ARRAY(T, bs_, CNN_TK * CNN_TM);
    U32 lid = LOCAL_ID;
    U32 tx = lid % 16u, ty = lid / 16u;
    INDEX g = (INDEX)GROUP_ID;
    INDEX slice = g / tiles;
    INDEX tile = g - slice * tiles;
    INDEX i0 = (tile / tiles_n) * CNN_TM;
    INDEX j0 = (tile % tiles_n) * CNN_TM;
    INDEX p_begin = slice * kslice;
    INDEX p_end = p_begin + kslice < k ? p_begin + kslice : k;
    T acc[4][4];
    for (U32 r = 0; r < 4u; r++)
        for (U32 q = 0; q < 4u; q++) acc[r][q] = (T)0;
    for (INDEX p0 = p_begin; p0 < p_end; p0 += CNN_TK) {
        /* Load 64×16 of op(A) and 16×64 of op(B); adjacent work-items read adjacent
         * addresses (the layout's contiguous direction). */
        for (U32 r = 0; r < 4u; r++) {
            U32 e = lid + r * WG;
            U32 ii, pp;
            if (ac == 1) {
                pp = e % CNN_TK;
                ii = e / CNN_TK;
            } else {
                ii = e % CNN_TM;
                pp = e / CNN_TM;
            }
            INDEX gi = i0 + ii, gp = p0 + pp;
            as_[pp * CNN_TM + ii] = (gi < m && gp < p_end) ? a[a_off + gi * ar + gp * ac] : (T)0;
        }
        for (U32 r = 0; r < 4u; r++) {
            U32 e = lid + r * WG;
            U32 jj, pp;
            if (bc == 1) {
                jj = e % CNN_TM;
                pp = e / CNN_TM;
            } else {
                pp = e % CNN_TK;
                jj = e / CNN_TK;
            }
            INDEX gj = j0 + jj, gp = p0 + pp;
            bs_[pp * CNN_TM + jj] = (gj < n && gp < p_end) ? b[b_off + gp * br + gj * bc] : (T)0;
        }
        BARRIER();
        for (U32 pp = 0; pp < CNN_TK; pp++) {
            T av[4], bv[4];
            for (U32 r = 0; r < 4u; r++) av[r] = as_[pp * CNN_TM + ty + 16u * r];
            for (U32 q = 0; q < 4u; q++) bv[q] = bs_[pp * CNN_TM + tx + 16u * q];
            for (U32 r = 0; r < 4u; r++)
                for (U32 q = 0; q < 4u; q++) acc[r][q] = acc[r][q] + av[r] * bv[q];
        }
        BARRIER();
    }
    INDEX base = c_off + slice * m * n;
    for (U32 r = 0; r < 4u; r++) {
        INDEX gi = i0 + ty + 16u * r;
        if (gi >= m) continue;
        for (U32 q = 0; q < 4u; q++) {
            INDEX gj = j0 + tx + 16u * q;
            if (gj >= n) continue;
            INDEX at = base + gi * n + gj;
            /* β = 0 never reads C: it may hold anything, NaN included. */
            c[at] = (beta == (T)0) ? alpha * acc[r][q] : alpha * acc[r][q] + beta * c[at];
        }
    }
}

/* The k-slices of a split GEMM added in slice order, then α and β applied. */
KERNEL void cnn_gemm_reduce(GLOBAL const T* part, INDEX slices, INDEX mn, GLOBAL T* c,
                            INDEX c_off, T alpha, T beta) {
    INDEX i = GLOBAL_ID;
    if (i < mn) {
        T s = part[i];
        for (INDEX t = 1; t < slices; t++) s = s + part[t * mn + i];
        INDEX at = c_off + i;
        c[at] = (beta == (T)0) ? alpha * s : alpha * s + beta * c[at];
    }
}

/* ---------------------------------------------------------------- bias */

KERNEL void cnn_add_row_bias(GLOBAL T* y, GLOBAL const T* bias, INDEX b_off, INDEX cols,
                             INDEX len) {
    INDEX i = GLOBAL_ID;
    if (i < len) y[i] = y[i] + bias[b_off + (i - cnn_div(i, cols) * cols)];
}

/* dst[off + j] += src[0, j] + src[1, j] + … (rows in order, one work-item per column). On the
 * gradient itself this is the host's loop; on partial sums it finishes a split sum. */
KERNEL void cnn_col_sum_acc(GLOBAL const T* src, INDEX rows, INDEX cols, GLOBAL T* dst,
                            INDEX off) {
    INDEX j = GLOBAL_ID;
    if (j < cols) {
        T d = dst[off + j];
        for (INDEX r = 0; r < rows; r++) d = d + src[r * cols + j];
        dst[off + j] = d;
    }
}

/* part[b, j] = Σ of rows b·rb … b·rb + rb − 1 of column j, in order: the first level of a
 * column sum over many rows. Work-group g covers columns of block g % col_blocks. */
KERNEL void cnn_col_sum_parts(GLOBAL const T* src, INDEX rows, INDEX cols, INDEX rb,
                              INDEX col_blocks, GLOBAL T* part) {
    INDEX g = (INDEX)GROUP_ID;
    INDEX blk = g / col_blocks;
    INDEX j = (g - blk * col_blocks) * WG + LOCAL_ID;
    if (j < cols) {
        INDEX r0 = blk * rb;
        INDEX r1 = r0 + rb < rows ? r0 + rb : rows;
        T s = (T)0;
        for (INDEX r = r0; r < r1; r++) s = s + src[r * cols + j];
        part[blk * cols + j] = s;
    }
}

/* ---------------------------------------------------------------- convolution
 * Columns of a chunk of images side by side: cols is (C·k·k) × (nb·OH·OW), row
 * (c·k + ky)·k + kx, column img·OH·OW + oy·OW + ox (the host's im2col, one image after the
 * other). Sizes within a chunk fit in 32 bits (the host checks). */

KERNEL void cnn_im2col(GLOBAL const T* x, INDEX x_off, GLOBAL T* cols, U32 ch, U32 h, U32 w,
                       U32 k, U32 stride, U32 pad, U32 oh, U32 ow, U32 ncols, U32 total) {
    INDEX gid = GLOBAL_ID;
    if (gid < (INDEX)total) {
        U32 e = (U32)gid;
        U32 row = e / ncols, col = e % ncols;
        U32 p_img = oh * ow;
        U32 img = col / p_img, p = col % p_img;
        U32 oy = p / ow, ox = p % ow;
        U32 c = row / (k * k), kk = row % (k * k);
        U32 ky = kk / k, kx = kk % k;
        U32 iy = oy * stride + ky, ix = ox * stride + kx; /* padded coordinates */
        T v = (T)0;
        if (iy >= pad && iy - pad < h && ix >= pad && ix - pad < w) {
            v = x[x_off + (INDEX)img * ((INDEX)ch * h * w) + ((INDEX)c * h + (iy - pad)) * w +
                  (ix - pad)];
        }
        cols[gid] = v;
    }
}

/* dx = col2im(dcols) as a gather: each input value sums, over (ky, kx) in increasing order,
 * the column entries that read it (the host adds them into zeros in that order). */
KERNEL void cnn_col2im(GLOBAL const T* dcols, GLOBAL T* dx, INDEX dx_off, U32 ch, U32 h, U32 w,
                       U32 k, U32 stride, U32 pad, U32 oh, U32 ow, U32 ncols, U32 total) {
    INDEX gid = GLOBAL_ID;
    if (gid < (INDEX)total) {
        U32 e = (U32)gid;
        U32 in_img = ch * h * w;
        U32 img = e / in_img, r = e % in_img;
        U32 c = r / (h * w), q = r % (h * w);
        U32 iy = q / w, ix = q % w;
        U32 col0 = img * (oh * ow);
        T d = (T)0;
        for (U32 ky = 0; ky < k; ky++) {
            U32 ty = iy + pad; /* = oy·stride + ky */
            if (ty < ky || (ty - ky) % stride != 0) continue;
            U32 oy = (ty - ky) / stride;
            if (oy >= oh) continue;
            for (U32 kx = 0; kx < k; kx++) {
                U32 tx = ix + pad;
                if (tx < kx || (tx - kx) % stride != 0) continue;
                U32 ox = (tx - kx) / stride;
                if (ox >= ow) continue;
                U32 row = (c * k + ky) * k + kx;
                d = d + dcols[(INDEX)row * ncols + col0 + oy * ow + ox];
            }
        }
        dx[dx_off + gid] = d;
    }
}

/* out[b, a, :] = in[a, b, :] for an A × B × P array (chunk layouts ↔ image-major layouts). */
KERNEL void cnn_swap_outer(GLOBAL const T* in, INDEX in_off, GLOBAL T* out, INDEX out_off,
                           INDEX na, INDEX nb, INDEX np, INDEX total) {
    INDEX e = GLOBAL_ID;
    if (e < total) {
        INDEX q = cnn_div(e, np);
        INDEX p = e - q * np;
        INDEX bb = cnn_div(q, na);
        INDEX aa = q - bb * na;
        out[out_off + e] = in[in_off + (aa * nb + bb) * np + p];
    }
}

/* ---------------------------------------------------------------- activations */

KERNEL void cnn_relu(GLOBAL const T* x, GLOBAL T* y, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T v = x[i];
        y[i] = (v > (T)0) ? v : (T)0;
    }
}

KERNEL void cnn_relu_backward(GLOBAL const T* y, GLOBAL const T* dy, GLOBAL T* dx, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) dx[i] = (y[i] > (T)0) ? dy[i] : (T)0;
}

/* Φ(x) = (1 + erf(x/√2))/2: the host's formula in f64; erfc in f32 (see CNN_ERFC). */
DEVICE_FN T cnn_phi(T x, T inv_sqrt2) {
#ifdef IRE_F64
    return (T)0.5 * ((T)1 + ERF(x * inv_sqrt2));
#else
    return (T)0.5 * CNN_ERFC(-(x * inv_sqrt2));
#endif
}

KERNEL void cnn_gelu(GLOBAL const T* x, GLOBAL T* y, T inv_sqrt2, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T v = x[i];
#ifdef IRE_F64
        y[i] = (T)0.5 * v * ((T)1 + ERF(v * inv_sqrt2));
#else
        y[i] = v * cnn_phi(v, inv_sqrt2);
#endif
    }
}

KERNEL void cnn_gelu_backward(GLOBAL const T* x, GLOBAL const T* dy, GLOBAL T* dx, T inv_sqrt2,
                              T inv_sqrt_2pi, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T v = x[i];
        T cdf = cnn_phi(v, inv_sqrt2);
        T pdf = inv_sqrt_2pi * EXP((T)-0.5 * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

KERNEL void cnn_scale(GLOBAL T* x, T s, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) x[i] = x[i] * s;
}

/* ---------------------------------------------------------------- batch norm
 * Input N × C × HW; one work-group per channel for the statistics, each work-item visiting
 * the channel's values j = LOCAL_ID, LOCAL_ID + WG, … (image j / HW, position j % HW). */

/* Start of a work-item's walk: image and position of value LOCAL_ID. */
#define CNN_BN_WALK_INIT(img, t, hw)     \
    INDEX img = cnn_div((INDEX)LOCAL_ID, hw); \
    INDEX t = (INDEX)LOCAL_ID - img * (hw)
/* Advance by WG values (step_img = WG / HW, step_t = WG % HW). */
#define CNN_BN_WALK_NEXT(img, t, hw, step_img, step_t) \
    do {                                              \
        (t) += (step_t);                              \
        (img) += (step_img);                          \
        if ((t) >= (hw)) {                            \
            (t) -= (hw);                              \
            (img) += 1;                               \
        }                                             \
    } while (0)

/* Batch mean and biased variance (two passes, as the host), save_mean / save_invstd, and the
 * running statistics when `update` (unbiased variance, momentum). */
KERNEL void cnn_bn_stats(GLOBAL const T* x, INDEX nimg, INDEX nch, INDEX hw, GLOBAL T* save_mean,
                         GLOBAL T* save_invstd, GLOBAL T* run_mean, GLOBAL T* run_var, T eps,
                         T momentum, T one_minus_momentum, U32 update) {
    LOCAL_ARRAY(T, red_, WG);
    INDEX ch = (INDEX)GROUP_ID;
    INDEX step_img = WG / hw, step_t = WG % hw;
    T mcount = (T)(nimg * hw);
    T s = (T)0;
    {
        CNN_BN_WALK_INIT(img, t, hw);
        for (; img < nimg;) {
            s = s + x[(img * nch + ch) * hw + t];
            CNN_BN_WALK_NEXT(img, t, hw, step_img, step_t);
        }
    }
    T total;
    CNN_GROUP_SUM(red_, s, total);
    T mean = total / mcount;
    T q = (T)0;
    {
        CNN_BN_WALK_INIT(img, t, hw);
        for (; img < nimg;) {
            T d = x[(img * nch + ch) * hw + t] - mean;
            q = q + d * d;
            CNN_BN_WALK_NEXT(img, t, hw, step_img, step_t);
        }
    }
    T sq;
    CNN_GROUP_SUM(red_, q, sq);
    if (LOCAL_ID == 0) {
        T var = sq / mcount;
        if (update != 0u) {
            T unbiased = (mcount > (T)1) ? var * mcount / (mcount - (T)1) : var;
            run_mean[ch] = one_minus_momentum * run_mean[ch] + momentum * mean;
            run_var[ch] = one_minus_momentum * run_var[ch] + momentum * unbiased;
        }
        save_mean[ch] = mean;
        save_invstd[ch] = (T)1 / SQRT(var + eps);
    }
}

/* y = γ·((x − μ)·invstd) + β. `eval`: μ, σ² are the running statistics (invstd computed
 * here); otherwise μ and invstd are the saved batch statistics. */
KERNEL void cnn_bn_apply(GLOBAL const T* x, GLOBAL T* y, GLOBAL const T* stat_mean,
                         GLOBAL const T* stat2, GLOBAL const T* params, INDEX g_off, INDEX b_off,
                         T eps, U32 eval, INDEX nch, INDEX hw, INDEX len) {
    INDEX i = GLOBAL_ID;
    if (i < len) {
        INDEX q = cnn_div(i, hw);
        INDEX ch = q - cnn_div(q, nch) * nch;
        T mean = stat_mean[ch];
        T invstd = (eval != 0u) ? (T)1 / SQRT(stat2[ch] + eps) : stat2[ch];
        y[i] = params[g_off + ch] * ((x[i] - mean) * invstd) + params[b_off + ch];
    }
}

/* Backward of a training batch norm, one work-group per channel: Σdy and Σdy·x̂ by the fixed
 * tree, dγ += Σdy·x̂, dβ += Σdy, then dx = γ·invstd/M · (M·dy − Σdy − x̂·Σdy·x̂). */
KERNEL void cnn_bn_backward(GLOBAL const T* x, GLOBAL const T* dy, GLOBAL T* dx, INDEX nimg,
                            INDEX nch, INDEX hw, GLOBAL const T* params, INDEX g_off,
                            GLOBAL const T* save_mean, GLOBAL const T* save_invstd,
                            GLOBAL T* grads, INDEX dg_off, INDEX db_off) {
    LOCAL_ARRAY(T, red_, WG);
    INDEX ch = (INDEX)GROUP_ID;
    INDEX step_img = WG / hw, step_t = WG % hw;
    T mcount = (T)(nimg * hw);
    T mean = save_mean[ch];
    T invstd = save_invstd[ch];
    T sa = (T)0, sb = (T)0;
    {
        CNN_BN_WALK_INIT(img, t, hw);
        for (; img < nimg;) {
            INDEX at = (img * nch + ch) * hw + t;
            T g = dy[at];
            T xh = (x[at] - mean) * invstd;
            sa = sa + g;
            sb = sb + g * xh;
            CNN_BN_WALK_NEXT(img, t, hw, step_img, step_t);
        }
    }
    T sdy, sdyx;
    CNN_GROUP_SUM(red_, sa, sdy);
    CNN_GROUP_SUM(red_, sb, sdyx);
    if (LOCAL_ID == 0) {
        grads[dg_off + ch] = grads[dg_off + ch] + sdyx;
        grads[db_off + ch] = grads[db_off + ch] + sdy;
    }
    T f = params[g_off + ch] * invstd / mcount;
    {
        CNN_BN_WALK_INIT(img, t, hw);
        for (; img < nimg;) {
            INDEX at = (img * nch + ch) * hw + t;
            T xh = (x[at] - mean) * invstd;
            dx[at] = f * (mcount * dy[at] - sdy - xh * sdyx);
            CNN_BN_WALK_NEXT(img, t, hw, step_img, step_t);
        }
    }
}

/* ---------------------------------------------------------------- pooling */

/* Mean over HW of each of the nc rows, summed in order as the host does; inv = 1/HW. */
KERNEL void cnn_avg_pool(GLOBAL const T* x, GLOBAL T* y, INDEX hw, INDEX nc, T inv) {
    INDEX i = GLOBAL_ID;
    if (i < nc) {
        T s = (T)0;
        for (INDEX t = 0; t < hw; t++) s = s + x[i * hw + t];
        y[i] = s * inv;
    }
}

KERNEL void cnn_avg_pool_backward(GLOBAL const T* dy, GLOBAL T* dx, INDEX hw, T inv,
                                  INDEX len) {
    INDEX i = GLOBAL_ID;
    if (i < len) dx[i] = dy[cnn_div(i, hw)] * inv;
}

/* No input value in a window (every position lies in the padding). */
#define CNN_NONE 0xFFFFFFFFu

/* Position (iy·w + ix) of the first maximum of window (oy, ox) of one plane, or CNN_NONE;
 * its value in *best (padding counts as −∞, as on the host). */
DEVICE_FN U32 cnn_window_max(GLOBAL const T* xi, U32 h, U32 w, U32 k, U32 stride, U32 pad,
                             U32 oy, U32 ox, T* best) {
    U32 at = CNN_NONE;
    for (U32 ky = 0; ky < k; ky++) {
        U32 iy = oy * stride + ky;
        if (iy < pad || iy - pad >= h) continue;
        for (U32 kx = 0; kx < k; kx++) {
            U32 ix = ox * stride + kx;
            if (ix < pad || ix - pad >= w) continue;
            U32 pos = (iy - pad) * w + (ix - pad);
            T v = xi[pos];
            if (at == CNN_NONE || v > *best) {
                at = pos;
                *best = v;
            }
        }
    }
    return at;
}

/* y = max over each window; `neg_inf` (−∞, from the host) where a window has no input. */
KERNEL void cnn_max_pool(GLOBAL const T* x, GLOBAL T* y, U32 h, U32 w, U32 k, U32 stride,
                         U32 pad, U32 oh, U32 ow, INDEX total, T neg_inf) {
    INDEX e = GLOBAL_ID;
    if (e < total) {
        INDEX plane = cnn_div(e, (INDEX)oh * ow);
        U32 r = (U32)(e - plane * ((INDEX)oh * ow));
        U32 oy = r / ow, ox = r % ow;
        T best = neg_inf;
        cnn_window_max(x + plane * ((INDEX)h * w), h, w, k, stride, pad, oy, ox, &best);
        y[e] = best;
    }
}

/* dx as a gather: each input value sums, over the windows that hold it in (oy, ox) order,
 * the gradients of those whose first maximum it is. */
KERNEL void cnn_max_pool_backward(GLOBAL const T* x, GLOBAL const T* dy, GLOBAL T* dx, U32 h,
                                  U32 w, U32 k, U32 stride, U32 pad, U32 oh, U32 ow,
                                  INDEX total, T neg_inf) {
    INDEX e = GLOBAL_ID;
    if (e < total) {
        INDEX plane = cnn_div(e, (INDEX)h * w);
        U32 r = (U32)(e - plane * ((INDEX)h * w));
        U32 iy = r / w, ix = r % w;
        GLOBAL const T* xi = x + plane * ((INDEX)h * w);
        GLOBAL const T* dyi = dy + plane * ((INDEX)oh * ow);
        /* Windows oy with oy·stride ≤ iy + pad ≤ oy·stride + k − 1. */
        U32 ty = iy + pad, tx = ix + pad;
        U32 oy0 = (ty + 1 > k) ? (ty + 1 - k + stride - 1) / stride : 0;
        U32 ox0 = (tx + 1 > k) ? (tx + 1 - k + stride - 1) / stride : 0;
        T d = (T)0;
        for (U32 oy = oy0; oy < oh && oy * stride <= ty; oy++) {
            for (U32 ox = ox0; ox < ow && ox * stride <= tx; ox++) {
                T best = neg_inf;
                if (cnn_window_max(xi, h, w, k, stride, pad, oy, ox, &best) == r)
                    d = d + dyi[oy * ow + ox];
            }
        }
        dx[e] = d;
    }
}
