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
 * qkv rows (b, t) hold [q | k | v], each h heads of dh; dm = h·dh. probs is b × h × t × t. */

/* One work-item per (b, h, query i): the row of probabilities, sums in key order. */
KERNEL void tf_attn_probs(GLOBAL const T* qkv, INDEX b, INDEX t, INDEX h, INDEX dh,
                          U32 causal, T scale, GLOBAL T* probs) {
    INDEX gid = GLOBAL_ID;
    if (gid < b * h * t) {
        INDEX i = gid % t;
        INDEX hi = (gid / t) % h;
        INDEX bi = gid / (t * h);
        INDEX dm = h * dh;
        GLOBAL const T* q = qkv + (bi * t + i) * 3 * dm + hi * dh;
        GLOBAL T* pr = probs + gid * t;
        INDEX last = causal ? i + 1 : t;
        T mx = (T)0;
        for (INDEX j = 0; j < last; j++) {
            GLOBAL const T* k = qkv + (bi * t + j) * 3 * dm + dm + hi * dh;
            T s = (T)0;
            for (INDEX c = 0; c < dh; c++) s = s + q[c] * k[c];
            s = s * scale;
            pr[j] = s;
            if (j == 0 || s > mx) mx = s;
        }
        T sum = (T)0;
        for (INDEX j = 0; j < last; j++) {
            T e = EXP(pr[j] - mx);
            pr[j] = e;
            sum = sum + e;
        }
        for (INDEX j = 0; j < t; j++) pr[j] = (j < last) ? pr[j] / sum : (T)0;
    }
}

/* One work-item per output element (b, i, head, c): Σ_j P_ij v_jc in key order. */
KERNEL void tf_attn_out(GLOBAL const T* qkv, GLOBAL const T* probs, INDEX b, INDEX t,
                        INDEX h, INDEX dh, U32 causal, GLOBAL T* out) {
    INDEX gid = GLOBAL_ID;
    INDEX dm = h * dh;
    if (gid < b * t * dm) {
        INDEX c = gid % dh;
        INDEX hi = (gid / dh) % h;
        INDEX i = (gid / dm) % t;
        INDEX bi = gid / (dm * t);
        GLOBAL const T* pr = probs + ((bi * h + hi) * t + i) * t;
        INDEX last = causal ? i + 1 : t;
        T acc = (T)0;
        for (INDEX j = 0; j < last; j++)
            acc = acc + pr[j] * qkv[(bi * t + j) * 3 * dm + 2 * dm + hi * dh + c];
        out[gid] = acc;
    }
}

/* One work-item per (b, h, query i): ds_ij = P_ij (dP_ij − Σ_j' dP_ij' P_ij')·scale with
 * dP_ij = dO_i · v_j, into ds (the shape of probs). */
KERNEL void tf_attn_ds(GLOBAL const T* qkv, GLOBAL const T* probs, GLOBAL const T* dout,
                       INDEX b, INDEX t, INDEX h, INDEX dh, U32 causal, T scale,
                       GLOBAL T* ds) {
    INDEX gid = GLOBAL_ID;
    if (gid < b * h * t) {
        INDEX i = gid % t;
        INDEX hi = (gid / t) % h;
        INDEX bi = gid / (t * h);
        INDEX dm = h * dh;
        GLOBAL const T* dop = dout + (bi * t + i) * dm + hi * dh;
        GLOBAL const T* pr = probs + gid * t;
        GLOBAL T* dsr = ds + gid * t;
        INDEX last = causal ? i + 1 : t;
        T dpp = (T)0;
        for (INDEX j = 0; j < last; j++) {
            GLOBAL const T* v = qkv + (bi * t + j) * 3 * dm + 2 * dm + hi * dh;
            T dp = (T)0;
            for (INDEX c = 0; c < dh; c++) dp = dp + dop[c] * v[c];
            dsr[j] = dp;
            dpp = dpp + dp * pr[j];
        }
        for (INDEX j = 0; j < t; j++) dsr[j] = (j < last) ? pr[j] * (dsr[j] - dpp) * scale : (T)0;
    }
}

/* One work-item per element of dqkv (written, not accumulated): dQ_i = Σ_j ds_ij k_j,
 * dK_j = Σ_i ds_ij q_i, dV_j = Σ_i P_ij dO_i, each in the host's order. */
KERNEL void tf_attn_dqkv(GLOBAL const T* qkv, GLOBAL const T* probs, GLOBAL const T* dout,
                         GLOBAL const T* ds, INDEX b, INDEX t, INDEX h, INDEX dh, U32 causal,
                         GLOBAL T* dqkv) {
    INDEX gid = GLOBAL_ID;
    INDEX dm = h * dh;
    if (gid < b * t * 3 * dm) {
        INDEX col = gid % (3 * dm);
        INDEX row = gid / (3 * dm);
        INDEX ti = row % t;
        INDEX bi = row / t;
        INDEX part = col / dm;
        INDEX hi = (col % dm) / dh;
        INDEX c = col % dh;
        GLOBAL const T* dsb = ds + (bi * h + hi) * t * t;
        GLOBAL const T* pb = probs + (bi * h + hi) * t * t;
        GLOBAL const T* seq = qkv + bi * t * 3 * dm + hi * dh + c;
        T acc = (T)0;
        if (part == 0) {
            INDEX last = causal ? ti + 1 : t;
            for (INDEX j = 0; j < last; j++) acc = acc + dsb[ti * t + j] * seq[j * 3 * dm + dm];
        } else {
            INDEX i0 = causal ? ti : 0;
            if (part == 1) {
                for (INDEX i = i0; i < t; i++) acc = acc + dsb[i * t + ti] * seq[i * 3 * dm];
            } else {
                GLOBAL const T* dob = dout + bi * t * dm + hi * dh + c;
                for (INDEX i = i0; i < t; i++) acc = acc + pb[i * t + ti] * dob[i * dm];
            }
        }
        dqkv[gid] = acc;
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

/* One work-item per position i: chain[2i] = the next position with the same id (n if none),
 * chain[2i + 1] = 1 where i is the first position of its id. Invalid ids (the host's test:
 * 0 ≤ id < vocab, truncated) belong to no chain. */
KERNEL void tf_embed_chain(GLOBAL const T* ids, INDEX n, INDEX vocab, GLOBAL T* chain) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T id = ids[i];
        int valid = id >= (T)0 && id < (T)vocab;
        INDEX key = valid ? (INDEX)id : 0;
        INDEX next = n;
        int first = valid;
        if (valid) {
            for (INDEX k = 0; k < n; k++) {
                T o = ids[k];
                if (k == i || !(o >= (T)0 && o < (T)vocab) || (INDEX)o != key) continue;
                if (k < i) {
                    first = 0;
                } else {
                    next = k;
                    break;
                }
            }
        }
        chain[2 * i] = (T)next;
        chain[2 * i + 1] = first ? (T)1 : (T)0;
    }
}

/* One work-item per (first position of an id, column): dtable[id] += dy of each position of
 * the id, in position order (the host's order, so the same bits). */
KERNEL void tf_embed_grad(GLOBAL const T* ids, GLOBAL const T* chain, GLOBAL const T* dy,
                          INDEX n, INDEX d, GLOBAL T* dtable, INDEX off) {
    INDEX gid = GLOBAL_ID;
    if (gid < n * d) {
        INDEX i = gid / d;
        INDEX col = gid % d;
        if (chain[2 * i + 1] != (T)0) {
            INDEX at = off + (INDEX)ids[i] * d + col;
            T v = dtable[at];
            INDEX k = i;
            while (k < n) {
                v = v + dy[k * d + col];
                k = (INDEX)chain[2 * k];
            }
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
