//! How closely each neural-network op on a device backend (OpenCL, CUDA) matches the host
//! implementation (the CPU and reference backends), one table per ops trait: `(op, f32
//! tolerance, f64 tolerance, why)`. A tolerance bounds the largest absolute difference over an
//! output divided by the largest magnitude of the host's output; `0` means bit for bit.
//!
//! The tables live outside `nn::device` so that tests of the host backends can hold the host
//! to the same bounds against an independent oracle (the naive attention, for one).

/// How far each op's result on a device may be from the CPU backend's: `(op, f32, f64, why)`.
///
/// The bound is relative and norm-wise: `max |device − cpu| ≤ tol · max |cpu|` over each
/// output buffer (weight gradients, saved and running statistics included). `0` means bit for
/// bit.
pub const CNN_TOLERANCES: &[(&str, f64, f64, &str)] = &[
    (
        "gemm",
        1e-5,
        2e-14,
        "sums over k in order (in slices when C has few tiles and k ≥ 1024), the CPU backend in blocks with FMA (gemm, matrixmultiply)",
    ),
    (
        "add_row_bias",
        0.0,
        0.0,
        "one addition per element, as on the host",
    ),
    (
        "row_bias_grad",
        1e-5,
        2e-14,
        "bitwise up to 256 rows; past that, partial sums of 256 rows are added in order",
    ),
    (
        "conv2d",
        1e-5,
        2e-14,
        "one GEMM per chunk of images: as gemm",
    ),
    (
        "conv2d_backward",
        1e-5,
        2e-14,
        "dW sums over a chunk's images in one GEMM, the host image by image",
    ),
    ("relu", 0.0, 0.0, "a comparison"),
    ("relu_backward", 0.0, 0.0, "a comparison"),
    (
        "gelu",
        1e-6,
        1e-15,
        "the device's erf (erfc in f32) is not correctly rounded; the host works in f64",
    ),
    ("gelu_backward", 1e-6, 1e-15, "as gelu, and exp"),
    (
        "batch_norm",
        1e-5,
        2e-14,
        "channel statistics by a tree sum in the dtype, the host's in eight f64 lanes per image",
    ),
    (
        "batch_norm_backward",
        1e-5,
        2e-14,
        "channel sums by a tree in the dtype, the host's in eight f64 lanes per image",
    ),
    (
        "global_avg_pool",
        0.0,
        0.0,
        "the host's sum in order, then one product",
    ),
    ("global_avg_pool_backward", 0.0, 0.0, "one product"),
    ("max_pool2d", 0.0, 0.0, "comparisons"),
    (
        "max_pool2d_backward",
        0.0,
        0.0,
        "the host's additions, in window order",
    ),
    ("scale", 0.0, 0.0, "one product"),
];

/// How closely each op matches the host (CPU/reference) implementation:
/// `(op, f32 tolerance, f64 tolerance, why)`. A tolerance bounds the largest absolute
/// difference over the outputs divided by the largest magnitude of the host's outputs;
/// `0.0` means bit-identical.
pub const TF_TOLERANCES: &[(&str, f64, f64, &str)] = &[
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
        "exp and log of the device library; the online softmax rescales every 16 keys (the host every 64); f32 statistics where the host keeps f64",
    ),
    (
        "attention_backward",
        1e-5,
        1e-13,
        "probabilities recomputed by the device's exp; sums in the host's order; f32 statistics where the host keeps f64",
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

/// How closely each op matches the host (CPU/reference) implementation:
/// `(op, f32 tolerance, f64 tolerance, why)`, as [`TF_TOLERANCES`].
pub const LOSS_TOLERANCES: &[(&str, f64, f64, &str)] = &[
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
];
