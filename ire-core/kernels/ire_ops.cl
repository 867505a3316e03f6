/* The portable IRE kernel source: one C dialect for OpenCL and CUDA.
 *
 * The host prepends a dtype header (`#define IRE_F32` + `#define T float`, or `IRE_F64` +
 * `double`) and the prelude of its dialect (prelude_opencl.h / prelude_cuda.h), then compiles
 * the whole at run time. Every element-wise kernel spells the canonical formula of
 * ire-core/src/formulas.rs in the same order; with FP contraction off and correctly rounded
 * `/` and sqrt, results equal the reference backend's bit for bit.
 *
 * Launch contract: element-wise kernels take one work-item per element (`i < n` guarded);
 * reduction kernels are launched with work-groups of exactly REDUCE_WG items and any
 * number of groups (grid-stride loops), writing one partial per group, which the host adds. */

#define REDUCE_WG 256

#ifdef IRE_F64
#define KEY U64
DEVICE_FN KEY order_key(T x) {
    KEY b = BITS_F64(x);
    return (b >> 63) ? ~b : (b | ((KEY)1 << 63));
}
#else
#define KEY U32
DEVICE_FN KEY order_key(T x) {
    KEY b = BITS_F32(x);
    return (b >> 31) ? ~b : (b | ((KEY)1 << 31));
}
#endif

/* x - x is 0 for a finite x and NaN for an infinity or a NaN. */
#define IS_FINITE(x) (((x) - (x)) == ((x) - (x)))
/* Only a NaN is unequal to itself. */
#define IS_NAN(x) ((x) != (x))

/* The packed IRE mask (ire-core/src/mask.rs): coordinate i is bit i % 32 of word i / 32
 * (least significant first), a set bit = flat; the unused bits of the last word are zero. */
#define MASK_BIT(mask, i) ((U8)(((mask)[(i) >> 5] >> (U32)((i) & 31u)) & 1u))

/* Set bits of a word (portable: no popcount builtin is shared by both dialects). */
DEVICE_FN U32 bit_count(U32 x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (x * 0x01010101u) >> 24;
}

/* ---------------------------------------------------------------- plumbing */

KERNEL void fill(GLOBAL T* x, T value, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) x[i] = value;
}

KERNEL void fill_u8(GLOBAL U8* x, U8 value, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) x[i] = value;
}

/* ---------------------------------------------------------------- canonical formulas */

DEVICE_FN T f_sgd(T p, T g, T lr, T wd) {
    T d = g + wd * p;
    return p - lr * d;
}

/* flags: bit 0 = first step (buffer := d), bit 1 = Nesterov. Returns θ', writes b'. */
DEVICE_FN T f_sgd_momentum(T p, T g, T* b, T lr, T wd, T mu, T dc, U32 flags) {
    T d = g + wd * p;
    T b2 = (flags & 1u) ? d : (mu * (*b) + dc * d);
    T u = (flags & 2u) ? (d + mu * b2) : b2;
    *b = b2;
    return p - lr * u;
}

DEVICE_FN T f_adamw(T p, T g, T* m, T* v, T decay, T b1, T omb1, T b2, T omb2, T step_size,
                    T bc2s, T eps) {
    T td = p * decay;
    T m2 = b1 * (*m) + omb1 * g;
    T v2 = b2 * (*v) + omb2 * (g * g);
    T den = SQRT(v2) / bc2s + eps;
    *m = m2;
    *v = v2;
    return td - step_size * (m2 / den);
}

DEVICE_FN T f_boost(T pb, T po, U8 n, T kappa) {
    T kn = (n != 0) ? kappa : (T)0;
    return pb + kn * (pb - po);
}

/* ---------------------------------------------------------------- element-wise kernels */

KERNEL void axpy(GLOBAL T* y, T a, GLOBAL const T* x, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) y[i] = y[i] + a * x[i];
}

KERNEL void sgd_step(GLOBAL T* theta, GLOBAL const T* grad, T lr, T wd, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) theta[i] = f_sgd(theta[i], grad[i], lr, wd);
}

KERNEL void sgd_momentum_step(GLOBAL T* theta, GLOBAL const T* grad, GLOBAL T* buf, T lr, T wd,
                              T mu, T dc, U32 flags, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T b = buf[i];
        theta[i] = f_sgd_momentum(theta[i], grad[i], &b, lr, wd, mu, dc, flags);
        buf[i] = b;
    }
}

KERNEL void adamw_step(GLOBAL T* theta, GLOBAL const T* grad, GLOBAL T* m, GLOBAL T* v,
                       T decay, T b1, T omb1, T b2, T omb2, T step_size, T bc2s, T eps,
                       INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T mi = m[i];
        T vi = v[i];
        theta[i] = f_adamw(theta[i], grad[i], &mi, &vi, decay, b1, omb1, b2, omb2, step_size,
                           bc2s, eps);
        m[i] = mi;
        v[i] = vi;
    }
}

KERNEL void ire_boost(GLOBAL T* theta, GLOBAL const T* theta_old, GLOBAL const U32* mask,
                      T kappa, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) theta[i] = f_boost(theta[i], theta_old[i], MASK_BIT(mask, i), kappa);
}

/* Fused IRE steps: θ_base stays in a register, the old θ is never stored. */
KERNEL void sgd_ire_step(GLOBAL T* theta, GLOBAL const T* grad, T lr, T wd,
                         GLOBAL const U32* mask, T kappa, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T p = theta[i];
        theta[i] = f_boost(f_sgd(p, grad[i], lr, wd), p, MASK_BIT(mask, i), kappa);
    }
}

KERNEL void sgd_momentum_ire_step(GLOBAL T* theta, GLOBAL const T* grad, GLOBAL T* buf, T lr,
                                  T wd, T mu, T dc, U32 flags, GLOBAL const U32* mask, T kappa,
                                  INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T p = theta[i];
        T b = buf[i];
        T pb = f_sgd_momentum(p, grad[i], &b, lr, wd, mu, dc, flags);
        theta[i] = f_boost(pb, p, MASK_BIT(mask, i), kappa);
        buf[i] = b;
    }
}

KERNEL void adamw_ire_step(GLOBAL T* theta, GLOBAL const T* grad, GLOBAL T* m, GLOBAL T* v,
                           T decay, T b1, T omb1, T b2, T omb2, T step_size, T bc2s, T eps,
                           GLOBAL const U32* mask, T kappa, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T p = theta[i];
        T mi = m[i];
        T vi = v[i];
        T pb = f_adamw(p, grad[i], &mi, &vi, decay, b1, omb1, b2, omb2, step_size, bc2s, eps);
        theta[i] = f_boost(pb, p, MASK_BIT(mask, i), kappa);
        m[i] = mi;
        v[i] = vi;
    }
}

/* c = 1 - beta, computed on the host in T. */
KERNEL void ema_square(GLOBAL T* h, GLOBAL const T* g, T beta, T c, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T gi = g[i];
        h[i] = beta * h[i] + c * (gi * gi);
    }
}

KERNEL void ema_abs(GLOBAL T* h, GLOBAL const T* g, T beta, T c, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) h[i] = beta * h[i] + c * FABS(g[i]);
}

KERNEL void ema_product(GLOBAL T* h, GLOBAL const T* a, GLOBAL const T* b, T beta, T c,
                        INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) h[i] = beta * h[i] + c * (a[i] * b[i]);
}

/* One work-item per mask word: the rule h <= tau over its (up to) 32 coordinates. */
KERNEL void mask_le(GLOBAL const T* h, T tau, GLOBAL U32* mask, INDEX n) {
    INDEX w = GLOBAL_ID;
    INDEX start = w * 32;
    if (start < n) {
        INDEX end = (n - start < 32) ? n : start + 32;
        U32 word = 0u;
        for (INDEX i = start; i < end; ++i) word |= ((h[i] <= tau) ? 1u : 0u) << (U32)(i - start);
        mask[w] = word;
    }
}

/* One work-item per mask word of n coordinates: bytes (0 = sharp) packed. */
KERNEL void mask_pack(GLOBAL const U8* bytes, GLOBAL U32* mask, INDEX n) {
    INDEX w = GLOBAL_ID;
    INDEX start = w * 32;
    if (start < n) {
        INDEX end = (n - start < 32) ? n : start + 32;
        U32 word = 0u;
        for (INDEX i = start; i < end; ++i) word |= ((bytes[i] != 0) ? 1u : 0u) << (U32)(i - start);
        mask[w] = word;
    }
}

/* One work-item per coordinate: the packed mask as 0/1 bytes. */
KERNEL void mask_unpack(GLOBAL const U32* mask, GLOBAL U8* bytes, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) bytes[i] = MASK_BIT(mask, i);
}

KERNEL void asam_perturb(GLOBAL T* theta, GLOBAL const T* g, T s, INDEX n) {
    INDEX i = GLOBAL_ID;
    if (i < n) {
        T p = theta[i];
        theta[i] = p + ((p * p) * g[i]) * s;
    }
}

/* ---------------------------------------------------------------- reductions */

/* Tree reduction of `acc` over one work-group into out[GROUP_ID], through the local array
 * `scratch_` that the kernel declares at its top level (OpenCL requires local variables at
 * kernel scope). */
#define GROUP_REDUCE(type, acc, out)                                      \
    do {                                                                  \
        scratch_[LOCAL_ID] = (acc);                                       \
        BARRIER();                                                        \
        for (U32 s_ = REDUCE_WG / 2; s_ > 0; s_ >>= 1) {                  \
            if (LOCAL_ID < s_)                                            \
                scratch_[LOCAL_ID] = scratch_[LOCAL_ID] + scratch_[LOCAL_ID + s_]; \
            BARRIER();                                                    \
        }                                                                 \
        if (LOCAL_ID == 0) (out)[GROUP_ID] = scratch_[0];                 \
    } while (0)

KERNEL void sum_squares_partial(GLOBAL const T* x, INDEX n, GLOBAL T* partial) {
    LOCAL_ARRAY(T, scratch_, REDUCE_WG);
    T acc = (T)0;
    for (INDEX i = GLOBAL_ID; i < n; i += GLOBAL_SIZE) {
        T v = x[i];
        acc = acc + v * v;
    }
    GROUP_REDUCE(T, acc, partial);
}

KERNEL void sum_squares_product_partial(GLOBAL const T* a, GLOBAL const T* b, INDEX n,
                                        GLOBAL T* partial) {
    LOCAL_ARRAY(T, scratch_, REDUCE_WG);
    T acc = (T)0;
    for (INDEX i = GLOBAL_ID; i < n; i += GLOBAL_SIZE) {
        T p = a[i] * b[i];
        acc = acc + p * p;
    }
    GROUP_REDUCE(T, acc, partial);
}

KERNEL void count_non_finite_partial(GLOBAL const T* x, INDEX n, GLOBAL U32* partial) {
    LOCAL_ARRAY(U32, scratch_, REDUCE_WG);
    U32 acc = 0;
    for (INDEX i = GLOBAL_ID; i < n; i += GLOBAL_SIZE) {
        T v = x[i];
        acc += IS_FINITE(v) ? 0u : 1u;
    }
    GROUP_REDUCE(U32, acc, partial);
}

/* Set bits of n packed mask words (flat coordinates: the unused bits are zero). */
KERNEL void count_flat_partial(GLOBAL const U32* x, INDEX n, GLOBAL U32* partial) {
    LOCAL_ARRAY(U32, scratch_, REDUCE_WG);
    U32 acc = 0;
    for (INDEX i = GLOBAL_ID; i < n; i += GLOBAL_SIZE) acc += bit_count(x[i]);
    GROUP_REDUCE(U32, acc, partial);
}

KERNEL void count_nan_partial(GLOBAL const T* x, INDEX n, GLOBAL U32* partial) {
    LOCAL_ARRAY(U32, scratch_, REDUCE_WG);
    U32 acc = 0;
    for (INDEX i = GLOBAL_ID; i < n; i += GLOBAL_SIZE) {
        T v = x[i];
        acc += IS_NAN(v) ? 1u : 0u;
    }
    GROUP_REDUCE(U32, acc, partial);
}

/* ---------------------------------------------------------------- k-th largest (radix select)
 * One pass of a most-significant-byte-first radix selection over order keys: counts, among
 * the elements x[start .. start + n) whose key matches `prefix` on the bits of `prefix_mask`,
 * how many have each value of the byte at `shift`. The host accumulates `hist` (256 counters,
 * zeroed by the host, read back before they could wrap) over every buffer, picks the byte
 * that holds the k-th largest, extends the prefix and repeats: 4 passes for f32, 8 for f64.
 * The answer is exact. */
KERNEL void select_histogram(GLOBAL const T* x, INDEX start, INDEX n, U32 shift,
                             KEY prefix_mask, KEY prefix, GLOBAL U32* hist) {
    LOCAL_ARRAY(U32, local_hist, REDUCE_WG);
    local_hist[LOCAL_ID] = 0;
    BARRIER();
    for (INDEX i = start + GLOBAL_ID; i < start + n; i += GLOBAL_SIZE) {
        KEY k = order_key(x[i]);
        if ((k & prefix_mask) == prefix) {
            ATOMIC_ADD_U32(&local_hist[(U32)((k >> shift) & (KEY)0xFF)], 1u);
        }
    }
    BARRIER();
    if (local_hist[LOCAL_ID] != 0) ATOMIC_ADD_U32(&hist[LOCAL_ID], local_hist[LOCAL_ID]);
}
