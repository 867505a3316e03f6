//! Property (d): save → load → continue equals an uninterrupted run, bit for bit (through
//! burn's own file recorder); a record that does not fit is refused with nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use common::{B, Batches, Mlp};
use ire_burn::estimator::{LabelSampler, estimator_gradient};
use ire_burn::{AdmIre, Error, IreRecord};
use ire_core::{AdamWConfig, IreConfig};

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ire-burn-resume-{}-{name}", std::process::id()))
}

fn ire() -> IreConfig {
    IreConfig {
        kappa: 2.0,
        gamma: 0.7,
        refresh_every: 4,
        warmup_steps: 2,
        ..IreConfig::default()
    }
}

fn lr_at(step: usize) -> f64 {
    1e-2 / (1.0 + step as f64 * 0.05)
}

fn train(opt: &mut AdmIre<B>, mut m: Mlp<B>, steps: std::ops::Range<usize>) -> Mlp<B> {
    let data = Batches::new(64);
    let sampler = LabelSampler::new(5);
    for step in steps {
        let (x, y) = data.get::<B>(step);
        let (_, g) = m.loss_grads(x.clone(), y);
        if opt.refresh_due() {
            let e = estimator_gradient(m.logits(x), &m, &sampler, step as u64).unwrap();
            opt.refresh(&m, e).unwrap();
        }
        m = Optimizer::<Mlp<B>, B>::step(opt, lr_at(step), m, g);
        assert!(opt.take_error().is_none());
    }
    m
}

#[test]
fn save_load_continue_equals_an_uninterrupted_run() {
    let mut opt_a = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    let a = train(&mut opt_a, Mlp::new(3, 32), 0..31);

    let mut opt_b = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    let b = train(&mut opt_b, Mlp::new(3, 32), 0..17);
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let (model_path, opt_path) = (temp("model"), temp("optim"));
    recorder
        .record(b.clone().into_record(), model_path.clone())
        .unwrap();
    Recorder::<B>::record(
        &recorder,
        Optimizer::<Mlp<B>, B>::to_record(&opt_b),
        opt_path.clone(),
    )
    .unwrap();
    drop((opt_b, b));

    // A new model (other initial values) and a new optimizer, both loaded from the files.
    let device = Default::default();
    let model_record = recorder.load(model_path.clone(), &device).unwrap();
    let c = Mlp::<B>::new(99, 32).load_record(model_record);
    let opt_record: IreRecord = Recorder::<B>::load(&recorder, opt_path.clone(), &device).unwrap();
    let opt_c = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    let mut opt_c = Optimizer::<Mlp<B>, B>::load_record(opt_c, opt_record);
    assert!(opt_c.take_error().is_none());
    assert_eq!(opt_c.ire().step_count(), 17);
    let c = train(&mut opt_c, c, 17..31);
    assert_eq!(a.values(), c.values());
    // Same state (the parameter ids differ: `a` is another model than `b` and `c`).
    assert!(
        Optimizer::<Mlp<B>, B>::to_record(&opt_a).state
            == Optimizer::<Mlp<B>, B>::to_record(&opt_c).state,
        "optimizer states differ"
    );
    for p in [model_path, opt_path] {
        std::fs::remove_file(p.with_extension("bin")).ok();
    }
}

#[test]
fn a_record_that_does_not_fit_is_refused_and_nothing_changes() {
    let mut opt = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    let m = train(&mut opt, Mlp::new(4, 32), 0..5);
    let record = Optimizer::<Mlp<B>, B>::to_record(&opt);

    // Another model: other parameter ids.
    let mut other = AdmIre::<B>::adamw(AdamWConfig::default(), ire()).unwrap();
    let _ = train(&mut other, Mlp::new(4, 32), 0..3);
    let before = Optimizer::<Mlp<B>, B>::to_record(&other);
    assert!(matches!(
        other.try_load_record(record.clone()),
        Err(Error::RecordParams { .. })
    ));
    let mut other = Optimizer::<Mlp<B>, B>::load_record(other, record.clone());
    assert!(matches!(
        other.take_error(),
        Some(Error::RecordParams { .. })
    ));
    assert_eq!(Optimizer::<Mlp<B>, B>::to_record(&other), before);

    // Another optimizer kind.
    let mut sgd = ire_burn::SgdIre::<B>::sgd(ire_core::SgdConfig::default(), ire()).unwrap();
    assert!(matches!(
        sgd.try_load_record(record.clone()),
        Err(Error::Core(ire_core::Error::State(_)))
    ));
    // A record without state.
    let empty = IreRecord {
        param_ids: record.param_ids.clone(),
        state: None,
    };
    assert!(matches!(
        opt.try_load_record(empty),
        Err(Error::EmptyRecord)
    ));
    // The optimizer still steps the model it was used with.
    let _ = train(&mut opt, m, 5..7);
}
