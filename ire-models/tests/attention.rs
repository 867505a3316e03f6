//! Attention in blocks with an online softmax on the host backends (reference and CPU) against
//! the naive oracle of `support/naive_attention.rs` (the full probability matrix in `f64`), at
//! `t ∈ {1, 7, 64, 1000}`, causal and not, forward and backward, `f32` and `f64`, within the
//! `attention` and `attention_backward` rows of `TF_TOLERANCES`; and the two host backends
//! bit for bit against each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/naive_attention.rs"]
mod naive;

use ire_backend_cpu::CpuBackend;
use ire_core::{Backend, Error, Reference, Scalar};
use ire_models::nn::tolerances::TF_TOLERANCES;
use ire_models::nn::{AttnShape, TransformerOps};
use ire_models::rng::Rng;
use naive::{attention_shapes, naive_attention, rel_err};

fn tolerance<T: Scalar>(op: &str) -> f64 {
    let row = TF_TOLERANCES
        .iter()
        .find(|r| r.0 == op)
        .unwrap_or_else(|| panic!("{op} has no row in TF_TOLERANCES"));
    if T::EPSILON_F64 > 1e-10 { row.1 } else { row.2 }
}

/// `(out, lse, dqkv)` on backend `b` in `T`, `dqkv` filled with 7 first (it is written, not
/// accumulated).
fn run<B: TransformerOps, T: Scalar>(
    b: &B,
    s: AttnShape,
    qkv: &[f64],
    dout: &[f64],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let up = |v: &[f64]| {
        b.alloc_from(&v.iter().map(|&x| T::of(x)).collect::<Vec<T>>())
            .unwrap()
    };
    let q = up(qkv);
    let g = up(dout);
    let mut lse = b.alloc::<T>(s.lse_len()).unwrap();
    let mut out = b.alloc::<T>(s.out_len()).unwrap();
    b.attention(&q, s, &mut lse, &mut out).unwrap();
    let mut dq = up(&vec![7.0; s.qkv_len()]);
    b.attention_backward(&q, &out, &lse, &g, s, &mut dq)
        .unwrap();
    (
        b.to_vec(&out).unwrap(),
        b.to_vec(&lse).unwrap(),
        b.to_vec(&dq).unwrap(),
    )
}

fn inputs(s: &AttnShape) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(100 + s.t as u64 + 7 * s.causal as u64);
    // Scores of a few units: peaked rows, so the online maximum moves between blocks.
    let qkv = (0..s.qkv_len()).map(|_| 1.5 * rng.normal()).collect();
    let dout = (0..s.out_len()).map(|_| rng.normal()).collect();
    (qkv, dout)
}

fn f64s<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.as_f64()).collect()
}

fn against_oracle<B: TransformerOps, T: Scalar>(b: &B, name: &str) {
    for s in attention_shapes() {
        let (qkv, dout) = inputs(&s);
        // The oracle sees the inputs as rounded to T, so only the op's own rounding counts.
        let r = |v: &[f64]| v.iter().map(|&x| T::of(x).as_f64()).collect::<Vec<f64>>();
        let (want_o, want_l, want_d) = naive_attention(&s, &r(&qkv), &r(&dout));
        let (o, l, d) = run::<B, T>(b, s, &qkv, &dout);
        let what = format!("{name} {} {s:?}", std::any::type_name::<T>());
        let (eo, el, ed) = (
            rel_err(&f64s(&o), &want_o),
            rel_err(&f64s(&l), &want_l),
            rel_err(&f64s(&d), &want_d),
        );
        println!("{what}: out {eo:.2e}, lse {el:.2e}, dqkv {ed:.2e}");
        assert!(
            eo <= tolerance::<T>("attention"),
            "{what}: out error {eo:e}"
        );
        assert!(
            el <= tolerance::<T>("attention"),
            "{what}: lse error {el:e}"
        );
        assert!(
            ed <= tolerance::<T>("attention_backward"),
            "{what}: dqkv error {ed:e}"
        );
    }
}

#[test]
fn reference_attention_matches_the_naive_oracle() {
    against_oracle::<_, f64>(&Reference, "reference");
    against_oracle::<_, f32>(&Reference, "reference");
}

#[test]
fn cpu_attention_matches_the_naive_oracle() {
    against_oracle::<_, f64>(&CpuBackend::new(), "cpu");
    against_oracle::<_, f32>(&CpuBackend::new(), "cpu");
}

fn same_bits<T: Scalar>(what: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(
            x.order_key_u64(),
            y.order_key_u64(),
            "{what}[{i}]: reference {x:?}, cpu {y:?}"
        );
    }
}

fn bitwise<T: Scalar>() {
    let cpu = CpuBackend::new();
    for s in attention_shapes() {
        let (qkv, dout) = inputs(&s);
        let (ro, rl, rd) = run::<_, T>(&Reference, s, &qkv, &dout);
        let (co, cl, cd) = run::<_, T>(&cpu, s, &qkv, &dout);
        let what = format!("{} {s:?}", std::any::type_name::<T>());
        same_bits(&format!("out {what}"), &ro, &co);
        same_bits(&format!("lse {what}"), &rl, &cl);
        same_bits(&format!("dqkv {what}"), &rd, &cd);
    }
}

#[test]
fn cpu_attention_has_the_reference_bits() {
    bitwise::<f32>();
    bitwise::<f64>();
}

#[test]
fn attention_refuses_short_buffers() {
    let s = AttnShape {
        b: 2,
        t: 5,
        h: 3,
        dh: 4,
        causal: true,
    };
    let cpu = CpuBackend::new();
    let qkv = cpu.alloc::<f32>(s.qkv_len()).unwrap();
    let mut out = cpu.alloc::<f32>(s.out_len()).unwrap();
    let mut short = cpu.alloc::<f32>(s.lse_len() - 1).unwrap();
    let e = cpu.attention(&qkv, s, &mut short, &mut out).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    let lse = cpu.alloc::<f32>(s.lse_len()).unwrap();
    let mut dq = cpu.alloc::<f32>(s.qkv_len()).unwrap();
    let e = cpu
        .attention_backward(&qkv, &out, &short, &out, s, &mut dq)
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    let mut dq_short = cpu.alloc::<f32>(s.qkv_len() - 1).unwrap();
    let e = cpu
        .attention_backward(&qkv, &out, &lse, &out, s, &mut dq_short)
        .unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    // Zero sizes are no-ops.
    let empty = AttnShape { t: 0, ..s };
    let e0 = cpu.alloc::<f32>(0).unwrap();
    let mut o0 = cpu.alloc::<f32>(0).unwrap();
    let mut l0 = cpu.alloc::<f32>(0).unwrap();
    cpu.attention(&e0, empty, &mut l0, &mut o0).unwrap();
}
