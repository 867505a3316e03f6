/* Transformer and loss kernels (row norms, attention, RoPE, SwiGLU, embeddings, softmax
 * cross-entropy, sampling, dropout), in the portable dialect of ire-core/kernels/ire_ops.cl.
 * Compiled in one program after nn_cnn.cl; every launch has work-groups of exactly TF_WG
 * work-items. Sums run in a fixed order (sequential loops, or fixed-shape trees over a
 * work-group), never with atomics, so every result is deterministic. Indices and labels are
 * stored as T. */

#define TF_WG 256

/* A 64-bit constant from its two 32-bit halves (integer suffixes differ between dialects). */
#define TF_U64(hi, lo) ((((U64)(hi)) << 32) | (U64)(lo))

/* x - x is 0 for a finite x and NaN for an infinity or a NaN. */
#define TF_FINITE(x) (((x) - (x)) == ((x) - (x)))

/* Sum of each work-item's `v` over the work-group, into `out` on every work-item, through the
 * local array `a` (TF_WG entries); a fixed tree, so the same inputs give the same bits. */
#define TF_GROUP_SUM(a, v, out)                                                  \
    do {                                                                         \
        a[LOCAL_ID] = (v);                                                       \
        BARRIER();                                                               \
        for (U32 s_ = TF_WG / 2; s_ > 0; s_ >>= 1) {                             \
            if (LOCAL_ID < s_) a[LOCAL_ID] = a[LOCAL_ID] + a[LOCAL_ID + s_];     \
            BARRIER();                                                           \
        }                                                                        \
        (out) = a[0];                                                            \
        BARRIER();                                                               \
    } while (0)

/* Maximum (by `>`, so NaNs are skipped) of each work-item's `v`. */
#define TF_GROUP_MAX(a, v, out)                                                  \
    do {                                                                         \
        a[LOCAL_ID] = (v);                                                       \
        BARRIER();                                                               \
        for (U32 s_ = TF_WG / 2; s_ > 0; s_ >>= 1) {                             \
            if (LOCAL_ID < s_ && a[LOCAL_ID + s_] > a[LOCAL_ID])                 \
                a[LOCAL_ID] = a[LOCAL_ID + s_];                                  \
            BARRIER();                                                           \
        }                                                                        \
        (out) = a[0];                                                            \
        BARRIER();                                                               \
    } while (0)

/* Minimum of each work-item's INDEX `v`. */
#define TF_GROUP_MIN(a, v, out)                                                  \
    do {                                                                         \
        a[LOCAL_ID] = (v);                                                       \
        BARRIER();                                                               \
        for (U32 s_ = TF_WG / 2; s_ > 0; s_ >>= 1) {                             \
            if (LOCAL_ID < s_ && a[LOCAL_ID + s_] < a[LOCAL_ID])                 \
                a[LOCAL_ID] = a[LOCAL_ID + s_];                                  \
            BARRIER();                                                           \
        }                                                                        \
        (out) = a[0];                                                            \
        BARRIER();                                                               \
    } while (0)

/* ---------------------------------------------------------------- softmax cross-entropy */

/* One work-group per row. Writes dz = scale·(softmax − q) and, per row, (loss, argmax ==
 * label, status) into info: status 0 valid, 1 invalid label, 2 a non-finite logit. */
KERNEL void tf_xent_rows(GLOBAL const T* z, GLOBAL const T* labels, INDEX c, T eps_c,
                         T one_m_eps, T scale, GLOBAL T* dz, GLOBAL T* info) {
    LOCAL_ARRAY(T, tf_v, TF_WG);
    LOCAL_ARRAY(INDEX, tf_k, TF_WG);
    INDEX row = (INDEX)GROUP_ID;
    U32 lid = LOCAL_ID;
    GLOBAL const T* zr = z + row * c;
    GLOBAL T* dr = dz + row * c;
    T lab = labels[row];
    int valid = lab >= (T)0 && lab < (T)c && FLOOR(lab) == lab;
    INDEX label = valid ? (INDEX)lab : c;

    /* The first maximum (the host's argmax; index c marks a work-item without elements)
     * and a count of non-finite logits. */
    T best = (c > 0) ? zr[0] : (T)0;
    INDEX arg = c;
    T bad = (T)0;
    for (INDEX j = lid; j < c; j += TF_WG) {
        T v = zr[j];
        if (!TF_FINITE(v)) bad = bad + (T)1;
        if (arg == c || v > best) {
            best = v;
            arg = j;
        }
    }
    tf_v[lid] = best;
    tf_k[lid] = arg;
    BARRIER();
    for (U32 s_ = TF_WG / 2; s_ > 0; s_ >>= 1) {
        if (lid < s_) {
            T bo = tf_v[lid + s_];
            INDEX ao = tf_k[lid + s_];
            T bm = tf_v[lid];
            INDEX am = tf_k[lid];
            if (ao != c && (am == c || bo > bm || (bo == bm && ao < am))) {
                tf_v[lid] = bo;
                tf_k[lid] = ao;
            }
        }
        BARRIER();
    }
    T mx = tf_v[0];
    INDEX amax = tf_k[0];
    BARRIER();
    T nbad;
    TF_GROUP_SUM(tf_v, bad, nbad);

    T se = (T)0;
    for (INDEX j = lid; j < c; j += TF_WG) se = se + EXP(zr[j] - mx);
    T sum;
    TF_GROUP_SUM(tf_v, se, sum);
    T lse = mx + LOG(sum);

    T acc = (T)0;
    for (INDEX j = lid; j < c; j += TF_WG) {
        T q = (j == label) ? eps_c + one_m_eps : eps_c;
        T zl = zr[j] - lse;
        acc = acc + q * zl;
        dr[j] = scale * (EXP(zl) - q);
    }
    T total;
    TF_GROUP_SUM(tf_v, acc, total);
    if (lid == 0) {
        info[3 * row] = -total;
        info[3 * row + 1] = (amax == label) ? (T)1 : (T)0;
        info[3 * row + 2] = (nbad > (T)0) ? (T)2 : (valid ? (T)0 : (T)1);
    }
}

/* One work-group: res = (Σ loss, Σ correct, rows with a non-finite logit, the first invalid
 * label, 1 if there is one). */
KERNEL void tf_xent_total(GLOBAL const T* info, GLOBAL const T* labels, INDEX n,
                          GLOBAL T* res) {
    LOCAL_ARRAY(T, tf_v, TF_WG);
    LOCAL_ARRAY(INDEX, tf_k, TF_WG);
    U32 lid = LOCAL_ID;
    T loss = (T)0;
    T ok = (T)0;
    T nonfin = (T)0;
    INDEX first = n;
    for (INDEX r = lid; r < n; r += TF_WG) {
        T st = info[3 * r + 2];
        loss = loss + info[3 * r];
        ok = ok + info[3 * r + 1];
        if (st == (T)2) nonfin = nonfin + (T)1;
        if (st == (T)1 && r < first) first = r;
    }
    T loss_all;
    T ok_all;
    T nonfin_all;
    INDEX first_all;
    TF_GROUP_SUM(tf_v, loss, loss_all);
    TF_GROUP_SUM(tf_v, ok, ok_all);
    TF_GROUP_SUM(tf_v, nonfin, nonfin_all);
    TF_GROUP_MIN(tf_k, first, first_all);
    if (lid == 0) {
        res[0] = loss_all;
        res[1] = ok_all;
        res[2] = nonfin_all;
        res[3] = (first_all < n) ? labels[first_all] : (T)0;
        res[4] = (first_all < n) ? (T)1 : (T)0;
    }
}

/* ---------------------------------------------------------------- sampling */

/* One work-group per row: the first j with u < Σ_{i ≤ j} softmax(z)_i (the last class when
 * rounding leaves the sum below u). Work-item l owns a contiguous chunk of the row, so the
 * running sum goes through the classes in order. No early return for c = 0: PoCL
 * miscompiles a return ahead of barriers, so the empty row runs through the same code. */
KERNEL void tf_sample_rows(GLOBAL const T* z, INDEX c, GLOBAL const T* u, GLOBAL T* labels) {
    LOCAL_ARRAY(T, tf_v, TF_WG);
    LOCAL_ARRAY(INDEX, tf_k, TF_WG);
    INDEX row = (INDEX)GROUP_ID;
    U32 lid = LOCAL_ID;
    GLOBAL const T* zr = z + row * c;
    T m = (c > 0) ? zr[0] : (T)0;
    for (INDEX j = lid; j < c; j += TF_WG) {
        T v = zr[j];
        if (v > m) m = v;
    }
    T mx;
    TF_GROUP_MAX(tf_v, m, mx);

    INDEX chunk = (c + TF_WG - 1) / TF_WG;
    INDEX lo = (INDEX)lid * chunk;
    if (lo > c) lo = c;
    INDEX hi = lo + chunk;
    if (hi > c) hi = c;

    T e = (T)0;
    for (INDEX j = lo; j < hi; j++) e = e + EXP(zr[j] - mx);
    tf_v[lid] = e;
    BARRIER();
    if (lid == 0) {
        T s = (T)0;
        for (U32 k = 0; k < TF_WG; k++) s = s + tf_v[k];
        tf_v[0] = s;
    }
    BARRIER();
    T sum = tf_v[0];
    BARRIER();

    T pp = (T)0;
    for (INDEX j = lo; j < hi; j++) pp = pp + EXP(zr[j] - mx) / sum;
    tf_v[lid] = pp;
    BARRIER();
    if (lid == 0) {
        /* Exclusive prefix sums of the chunks, in order. */
        T s = (T)0;
        for (U32 k = 0; k < TF_WG; k++) {
            T w = tf_v[k];
            tf_v[k] = s;
            s = s + w;
        }
    }
    BARRIER();
    T acc = tf_v[lid];
    T uu = u[row];
    INDEX found = c;
    for (INDEX j = lo; j < hi; j++) {
        acc = acc + EXP(zr[j] - mx) / sum;
        if (uu < acc) {
            found = j;
            break;
        }
    }
    INDEX first;
    TF_GROUP_MIN(tf_k, found, first);
    if (lid == 0) labels[row] = (T)((first < c) ? first : ((c > 0) ? c - 1 : 0));
}

/* ---------------------------------------------------------------- dropout */

/* y = x·s where the hash of (seed, i) keeps element i (the host's `dropout_keep`: SplitMix64's
 * finalizer; keep iff its top 24 bits ≥ thr = ⌈p·2^24⌉). */
KERNEL void tf_dropout(GLOBAL const T* x, GLOBAL T* y, T s, U32 seed_lo, U32 seed_hi, U32 thr,
                       INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        U64 h = TF_U64(seed_hi, seed_lo) ^ ((U64)i * TF_U64(0x9E3779B9u, 0x7F4A7C15u));
        h = (h ^ (h >> 30)) * TF_U64(0xBF58476Du, 0x1CE4E5B9u);
        h = (h ^ (h >> 27)) * TF_U64(0x94D049BBu, 0x133111EBu);
        h = h ^ (h >> 31);
        y[i] = ((U32)(h >> 40) >= thr) ? x[i] * s : (T)0;
    }
}

/* ---------------------------------------------------------------- row norms */

/* One work-group per row of d. flags: bit 0 = β present, bit 1 = RMSNorm (mean 0). */
KERNEL void tf_norm_rows(GLOBAL const T* x, GLOBAL T* y, INDEX d, GLOBAL const T* p,
                         INDEX g_off, INDEX b_off, U32 flags, T eps, GLOBAL T* mean,
                         GLOBAL T* rstd) {
    LOCAL_ARRAY(T, tf_v, TF_WG);
    INDEX row = (INDEX)GROUP_ID;
    U32 lid = LOCAL_ID;
    GLOBAL const T* xr = x + row * d;
    GLOBAL T* yr = y + row * d;
    T dd = (T)d;
    T mu = (T)0;
    if ((flags & 2u) == 0) {
        T s = (T)0;
        for (INDEX j = lid; j < d; j += TF_WG) s = s + xr[j];
        T tot;
        TF_GROUP_SUM(tf_v, s, tot);
        mu = tot / dd;
    }
    T q = (T)0;
    for (INDEX j = lid; j < d; j += TF_WG) {
        T cx = xr[j] - mu;
        q = q + cx * cx;
    }
    T qs;
    TF_GROUP_SUM(tf_v, q, qs);
    T rs = (T)1 / SQRT(qs / dd + eps);
    for (INDEX j = lid; j < d; j += TF_WG) {
        T xh = (xr[j] - mu) * rs;
        T bb = (flags & 1u) ? p[b_off + j] : (T)0;
        yr[j] = p[g_off + j] * xh + bb;
    }
    if (lid == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

/* One work-group per row: dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)), g = γ ⊙ dy (RMSNorm,
 * rms = 1: without mean(g)). */
KERNEL void tf_norm_rows_dx(GLOBAL const T* x, GLOBAL const T* dy, GLOBAL T* dx, INDEX d,
                            GLOBAL const T* p, INDEX g_off, U32 rms, GLOBAL const T* mean,
                            GLOBAL const T* rstd) {
    LOCAL_ARRAY(T, tf_v, TF_WG);
    INDEX row = (INDEX)GROUP_ID;
    U32 lid = LOCAL_ID;
    GLOBAL const T* xr = x + row * d;
    GLOBAL const T* dyr = dy + row * d;
    GLOBAL T* dxr = dx + row * d;
    T mu = mean[row];
    T rs = rstd[row];
    T dd = (T)d;
    T sg = (T)0;
    T sgx = (T)0;
    for (INDEX j = lid; j < d; j += TF_WG) {
        T xh = (xr[j] - mu) * rs;
        T g = p[g_off + j] * dyr[j];
        sg = sg + g;
        sgx = sgx + g * xh;
    }
    T sg_all;
    T sgx_all;
    TF_GROUP_SUM(tf_v, sg, sg_all);
    TF_GROUP_SUM(tf_v, sgx, sgx_all);
    T mg = rms ? (T)0 : sg_all / dd;
    for (INDEX j = lid; j < d; j += TF_WG) {
        T xh = (xr[j] - mu) * rs;
        T g = p[g_off + j] * dyr[j];
        dxr[j] = rs * (g - mg - xh * sgx_all / dd);
    }
}

/* One work-item per column: dγ += Σ_r dy·x̂ and (has_beta) dβ += Σ_r dy, rows in order from
 * zero like the host. */
KERNEL void tf_norm_cols(GLOBAL const T* x, GLOBAL const T* dy, INDEX rows, INDEX d,
                         GLOBAL const T* mean, GLOBAL const T* rstd, GLOBAL T* grads,
                         INDEX dg_off, INDEX db_off, U32 has_beta) {
    INDEX j = GLOBAL_ID;
    if (j < d) {
        T ag = (T)0;
        T ab = (T)0;
        for (INDEX r = 0; r < rows; r++) {
            T xh = (x[r * d + j] - mean[r]) * rstd[r];
            T g = dy[r * d + j];
            ag = ag + g * xh;
            ab = ab + g;
        }
        grads[dg_off + j] = grads[dg_off + j] + ag;
        if (has_beta) grads[db_off + j] = grads[db_off + j] + ab;
    }
}

/* ---------------------------------------------------------------- attention
 * qkv rows (b, t) hold [q | k | v], each h heads of dh; dm = h·dh. One work-item per row
 * (sequence, head, position), numbered in that order; lse (the log-sum-exp of each row) is
 * b × h × t. No t × t buffer: the forward visits the keys in blocks of TF_AB with an online
 * softmax (running maximum m, normalizer l, unnormalized output rescaled by e^(m_old − m_new)
 * once per block); the backward recomputes each probability as e^(s − lse). Output columns go
 * in chunks of TF_AC private accumulators, the scores recomputed per chunk (one chunk for
 * dh ≤ TF_AC). Every sum runs in the host's order: a score over c, dQ over keys, dK and dV
 * over queries. */
#define TF_AB 16
#define TF_AC 32

/* The position, head and sequence of row `gid`, and the head's first q, k and v values. */
#define TF_ATTN_ROW(gid)                                                        \
    INDEX ti_ = (gid) % t;                                                      \
    INDEX hi_ = ((gid) / t) % h;                                                \
    INDEX bi_ = (gid) / (t * h);                                                \
    INDEX dm = h * dh;                                                          \
    INDEX r3 = 3 * dm;                                                          \
    GLOBAL const T* qh = qkv + bi_ * t * r3 + hi_ * dh;                         \
    GLOBAL const T* kh = qh + dm;                                               \
    GLOBAL const T* vh = qh + 2 * dm;                                           \
    INDEX oh = bi_ * t * dm + hi_ * dh

DEVICE_FN T tf_dot(GLOBAL const T* x, GLOBAL const T* y, INDEX n) {
    T s = (T)0;
    for (INDEX c = 0; c < n; c++) s = s + x[c] * y[c];
    return s;
}

/* out (b × t × dm) and lse of every row. */
KERNEL void tf_attn_fwd(GLOBAL const T* qkv, INDEX b, INDEX t, INDEX h, INDEX dh, U32 causal,
                        T scale, T neg_inf, GLOBAL T* out, GLOBAL T* lse) {
    INDEX gid = GLOBAL_ID;
    if (gid < b * h * t) {
        TF_ATTN_ROW(gid);
        GLOBAL const T* q = qh + ti_ * r3;
        GLOBAL T* o = out + oh + ti_ * dm;
        INDEX last = causal ? ti_ + 1 : t;
        for (INDEX c0 = 0;; c0 += TF_AC) {
            INDEX nc = (dh - c0 < TF_AC) ? dh - c0 : TF_AC;
            T acc[TF_AC];
            for (INDEX cc = 0; cc < nc; cc++) acc[cc] = (T)0;
            T m = neg_inf;
            T l = (T)0;
            for (INDEX j0 = 0; j0 < last; j0 += TF_AB) {
                INDEX nb = (last - j0 < TF_AB) ? last - j0 : TF_AB;
                T sb[TF_AB];
                T mb = neg_inf;
                for (INDEX jj = 0; jj < nb; jj++) {
                    T sc = tf_dot(q, kh + (j0 + jj) * r3, dh) * scale;
                    sb[jj] = sc;
                    if (sc > mb) mb = sc;
                }
                T mn = (mb > m) ? mb : m;
                T alpha = EXP(m - mn);
                l = l * alpha;
                for (INDEX cc = 0; cc < nc; cc++) acc[cc] = acc[cc] * alpha;
                for (INDEX jj = 0; jj < nb; jj++) {
                    T p = EXP(sb[jj] - mn);
                    GLOBAL const T* v = vh + (j0 + jj) * r3 + c0;
                    l = l + p;
                    for (INDEX cc = 0; cc < nc; cc++) acc[cc] = acc[cc] + p * v[cc];
                }
                m = mn;
            }
            for (INDEX cc = 0; cc < nc; cc++) o[c0 + cc] = acc[cc] / l;
            if (c0 == 0) lse[gid] = m + LOG(l);
            if (c0 + TF_AC >= dh) break;
        }
    }
}

/* dQ of every row (the q part of dqkv) and D_i = dO_i · O_i into drow: dS_ij = P_ij (dP_ij −
 * D_i)·scale with P_ij = e^(s_ij − lse_i), dP_ij = dO_i · v_j; dQ_i = Σ_j dS_ij k_j. */
KERNEL void tf_attn_bwd_q(GLOBAL const T* qkv, GLOBAL const T* out, GLOBAL const T* lse,
                          GLOBAL const T* dout, INDEX b, INDEX t, INDEX h, INDEX dh,
                          U32 causal, T scale, GLOBAL T* drow, GLOBAL T* dqkv) {
    INDEX gid = GLOBAL_ID;
    if (gid < b * h * t) {
        TF_ATTN_ROW(gid);
        GLOBAL const T* q = qh + ti_ * r3;
        GLOBAL const T* g = dout + oh + ti_ * dm;
        T di = tf_dot(g, out + oh + ti_ * dm, dh);
        drow[gid] = di;
        T li = lse[gid];
        GLOBAL T* dq = dqkv + (q - qkv);
        INDEX last = causal ? ti_ + 1 : t;
        for (INDEX c0 = 0; c0 < dh; c0 += TF_AC) {
            INDEX nc = (dh - c0 < TF_AC) ? dh - c0 : TF_AC;
            T acc[TF_AC];
            for (INDEX cc = 0; cc < nc; cc++) acc[cc] = (T)0;
            for (INDEX j = 0; j < last; j++) {
                GLOBAL const T* k = kh + j * r3;
                T p = EXP(tf_dot(q, k, dh) * scale - li);
                T ds = p * (tf_dot(g, vh + j * r3, dh) - di) * scale;
                for (INDEX cc = 0; cc < nc; cc++) acc[cc] = acc[cc] + ds * k[c0 + cc];
            }
            for (INDEX cc = 0; cc < nc; cc++) dq[c0 + cc] = acc[cc];
        }
    }
}

/* dK and dV of every key row j (the k and v parts of dqkv): dV_j = Σ_i P_ij dO_i,
 * dK_j = Σ_i dS_ij q_i, over the queries i that see key j, in order; D_i from drow. */
KERNEL void tf_attn_bwd_kv(GLOBAL const T* qkv, GLOBAL const T* lse, GLOBAL const T* dout,
                           GLOBAL const T* drow, INDEX b, INDEX t, INDEX h, INDEX dh,
                           U32 causal, T scale, GLOBAL T* dqkv) {
    INDEX gid = GLOBAL_ID;
    if (gid < b * h * t) {
        TF_ATTN_ROW(gid);
        INDEX lh = gid - ti_; /* the sequence's first row of lse and drow */
        GLOBAL const T* k = kh + ti_ * r3;
        GLOBAL const T* v = vh + ti_ * r3;
        GLOBAL T* dk = dqkv + (k - qkv);
        GLOBAL T* dv = dqkv + (v - qkv);
        INDEX i0 = causal ? ti_ : 0;
        for (INDEX c0 = 0; c0 < dh; c0 += TF_AC) {
            INDEX nc = (dh - c0 < TF_AC) ? dh - c0 : TF_AC;
            T ak[TF_AC];
            T av[TF_AC];
            for (INDEX cc = 0; cc < nc; cc++) {
                ak[cc] = (T)0;
                av[cc] = (T)0;
            }
            for (INDEX i = i0; i < t; i++) {
                GLOBAL const T* q = qh + i * r3;
                GLOBAL const T* g = dout + oh + i * dm;
                T p = EXP(tf_dot(q, k, dh) * scale - lse[lh + i]);
                T ds = p * (tf_dot(g, v, dh) - drow[lh + i]) * scale;
                for (INDEX cc = 0; cc < nc; cc++) {
                    av[cc] = av[cc] + p * g[c0 + cc];
                    ak[cc] = ak[cc] + ds * q[c0 + cc];
                }
            }
            for (INDEX cc = 0; cc < nc; cc++) {
                dk[c0 + cc] = ak[cc];
                dv[c0 + cc] = av[cc];
            }
        }
    }
}

/* ---------------------------------------------------------------- RoPE */

/* One work-item per rotated pair (b, t, q or k, head, pair i): angle pos·base^(−2i/dh);
 * sn_sign −1 rotates back. */
KERNEL void tf_rope(GLOBAL T* qkv, INDEX b, INDEX t, INDEX h, INDEX dh, T base, T sn_sign) {
    INDEX gid = GLOBAL_ID;
    INDEX npair = dh / 2;
    if (gid < b * t * 2 * h * npair) {
        INDEX i = gid % npair;
        INDEX hi = (gid / npair) % h;
        INDEX part = (gid / (npair * h)) % 2;
        INDEX row = gid / (npair * h * 2);
        INDEX ti = row % t;
        INDEX dm = h * dh;
        INDEX o = row * 3 * dm + part * dm + hi * dh + 2 * i;
        T ang = (T)ti * POW(base, -((T)2 * (T)i) / (T)dh);
        T sn = sn_sign * SIN(ang);
        T cs = COS(ang);
        T a = qkv[o];
        T bb = qkv[o + 1];
        qkv[o] = a * cs - bb * sn;
        qkv[o + 1] = a * sn + bb * cs;
    }
}

/* ---------------------------------------------------------------- SwiGLU */

KERNEL void tf_swiglu(GLOBAL const T* x, GLOBAL T* y, INDEX f, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        INDEX r = i / f;
        INDEX j = i % f;
        T a = x[r * 2 * f + j];
        y[i] = a / ((T)1 + EXP(-a)) * x[r * 2 * f + f + j];
    }
}

KERNEL void tf_swiglu_backward(GLOBAL const T* x, GLOBAL const T* dy, GLOBAL T* dx, INDEX f,
                               INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        INDEX r = i / f;
        INDEX j = i % f;
        T a = x[r * 2 * f + j];
        T bb = x[r * 2 * f + f + j];
        T sig = (T)1 / ((T)1 + EXP(-a));
        T silu = a * sig;
        dx[r * 2 * f + j] = dy[i] * bb * (sig * ((T)1 + a * ((T)1 - sig)));
        dx[r * 2 * f + f + j] = dy[i] * silu;
    }
}

/* ---------------------------------------------------------------- embeddings */

/* One work-item per (position, column): a copy of the table row; an id that is not a class
 * index below vocab gives NaN (the forward cannot return an error without a download, and
 * NaN reaches the loss, which reports it). */
KERNEL void tf_embedding(GLOBAL const T* ids, GLOBAL const T* table, INDEX off, INDEX vocab,
                         INDEX d, GLOBAL T* y, INDEX n) {
    INDEX gid = GLOBAL_ID;
    if (gid < n * d) {
        INDEX i = gid / d;
        INDEX col = gid % d;
        T id = ids[i];
        if (id >= (T)0 && id < (T)vocab && FLOOR(id) == id) {
            y[gid] = table[off + (INDEX)id * d + col];
        } else {
            T zero = id - id;
            y[gid] = zero / zero;
        }
    }
}

/* The lookup's backward as a scatter-add without float atomics, in O(n·d): a stable LSD radix
 * sort of the positions by id (TF_RADIX buckets a pass; per-block digit counts, one scan, a
 * stable scatter: no atomics, so the same order every run), then one work-item per (run of
 * equal ids, column) adds the run's dy rows in position order to the table: the host's
 * additions in the host's order, so the same bits. */
#define TF_RADIX 256

/* keys[i] = the id of position i, or vocab for an invalid id (sorted last, skipped);
 * pos[i] = i. */
KERNEL void tf_embed_keys(GLOBAL const T* ids, INDEX n, INDEX vocab, GLOBAL U32* keys,
                          GLOBAL U32* pos) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T id = ids[i];
        int valid = id >= (T)0 && id < (T)vocab && FLOOR(id) == id;
        keys[i] = valid ? (U32)id : (U32)vocab;
        pos[i] = (U32)i;
    }
}

/* How many keys of each block of TF_RADIX have each digit (key >> shift) & 255:
 * counts[digit·nblocks + block], digit-major so that one scan gives every destination. */
KERNEL void tf_sort_count(GLOBAL const U32* keys, INDEX n, U32 shift, INDEX nblocks,
                          GLOBAL U32* counts) {
    LOCAL_ARRAY(U32, tf_dg, TF_RADIX);
    INDEX blk = (INDEX)GROUP_ID;
    U32 lid = LOCAL_ID;
    INDEX e = blk * TF_RADIX + lid;
    tf_dg[lid] = (e < n) ? ((keys[e] >> shift) & 255u) : 256u;
    BARRIER();
    U32 c = 0;
    for (U32 k = 0; k < TF_RADIX; k++) c += (tf_dg[k] == lid) ? 1u : 0u;
    counts[(INDEX)lid * nblocks + blk] = c;
}

/* Exclusive prefix sums of the first len counts, in place, by one work-group: each work-item
 * a contiguous chunk. */
KERNEL void tf_sort_scan(GLOBAL U32* counts, INDEX len) {
    LOCAL_ARRAY(U32, tf_part, TF_WG);
    U32 lid = LOCAL_ID;
    INDEX chunk = (len + TF_WG - 1) / TF_WG;
    INDEX lo = (INDEX)lid * chunk;
    if (lo > len) lo = len;
    INDEX hi = (lo + chunk < len) ? lo + chunk : len;
    U32 s = 0;
    for (INDEX j = lo; j < hi; j++) s += counts[j];
    tf_part[lid] = s;
    BARRIER();
    if (lid == 0) {
        U32 acc = 0;
        for (U32 k = 0; k < TF_WG; k++) {
            U32 w = tf_part[k];
            tf_part[k] = acc;
            acc += w;
        }
    }
    BARRIER();
    U32 acc = tf_part[lid];
    for (INDEX j = lo; j < hi; j++) {
        U32 w = counts[j];
        counts[j] = acc;
        acc += w;
    }
}

/* Moves each key and position to offsets[digit·nblocks + block] + its rank among the keys of
 * its block with the same digit that come before it: a stable pass. */
KERNEL void tf_sort_scatter(GLOBAL const U32* keys, GLOBAL const U32* pos, INDEX n, U32 shift,
                            INDEX nblocks, GLOBAL const U32* offsets, GLOBAL U32* keys_out,
                            GLOBAL U32* pos_out) {
    LOCAL_ARRAY(U32, tf_dg, TF_RADIX);
    INDEX blk = (INDEX)GROUP_ID;
    U32 lid = LOCAL_ID;
    INDEX e = blk * TF_RADIX + lid;
    U32 my = (e < n) ? ((keys[e] >> shift) & 255u) : 256u;
    tf_dg[lid] = my;
    BARRIER();
    if (e < n) {
        U32 rank = 0;
        for (U32 k = 0; k < lid; k++) rank += (tf_dg[k] == my) ? 1u : 0u;
        INDEX dst = (INDEX)offsets[(INDEX)my * nblocks + blk] + rank;
        keys_out[dst] = keys[e];
        pos_out[dst] = pos[e];
    }
}

/* One work-item per (sorted slot s, column): where s starts a run of one valid id,
 * dtable[id] += dy of the run's positions, in position order. */
KERNEL void tf_embed_grad(GLOBAL const U32* keys, GLOBAL const U32* pos, GLOBAL const T* dy,
                          INDEX n, INDEX d, INDEX vocab, GLOBAL T* dtable, INDEX off) {
    INDEX gid = GLOBAL_ID;
    if (gid < n * d) {
        INDEX s = gid / d;
        INDEX col = gid % d;
        U32 key = keys[s];
        if ((INDEX)key < vocab && (s == 0 || keys[s - 1] != key)) {
            INDEX at = off + (INDEX)key * d + col;
            T v = dtable[at];
            for (INDEX k = s; k < n && keys[k] == key; k++) v = v + dy[(INDEX)pos[k] * d + col];
            dtable[at] = v;
        }
    }
}

/* x[b, t, :] += table[t, :]. */
KERNEL void tf_add_positions(GLOBAL T* x, GLOBAL const T* table, INDEX off, INDEX td,
                             INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) x[i] = x[i] + table[off + i % td];
}

/* One work-item per table element: dtable[t, :] += dy[b, t, :] for b in order. */
KERNEL void tf_add_positions_backward(GLOBAL const T* dy, INDEX b, INDEX td, GLOBAL T* dtable,
                                      INDEX off) {
    INDEX j = GLOBAL_ID;
    if (j < td) {
        T v = dtable[off + j];
        for (INDEX bi = 0; bi < b; bi++) v = v + dy[bi * td + j];
        dtable[off + j] = v;
    }
}

/* ViT patch rows, one work-item per output value: image i, row r (0 is the CLS slot, zero),
 * value k = (c, y, x) of patch r - 1 in row-major patch order. */
KERNEL void tf_patchify(GLOBAL const T* x, GLOBAL T* out, INDEX ch, INDEX side, INDEX p,
                        INDEX total) {
    INDEX j = GLOBAL_ID;
    if (j < total) {
        INDEX g = side / p;
        INDEX per = ch * p * p;
        INDEX t = g * g + 1;
        INDEX k = j % per;
        INDEX r = (j / per) % t;
        INDEX i = j / (per * t);
        T v = (T)0;
        if (r > 0) {
            INDEX py = (r - 1) / g, px = (r - 1) % g;
            INDEX c = k / (p * p), yy = (k / p) % p, xx = k % p;
            v = x[((i * ch + c) * side + py * p + yy) * side + px * p + xx];
        }
        out[j] = v;
    }
}
