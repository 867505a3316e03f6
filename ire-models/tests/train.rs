//! Training runs on real data (the digits shipped in `data/`): the loss falls, runs are
//! reproducible from the seed, batch norm only moves on the training pass, bad configs fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ire_backend_cpu::CpuBackend;
use ire_models::train::{
    ConfigError, DatasetKind, EstimatorBatch, EstimatorKind, OptimizerKind, TrainConfig,
    TrainError, Trainer,
};

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz")
}

fn cfg(model: &str, opt: OptimizerKind, steps: u64) -> TrainConfig {
    let mut c = TrainConfig {
        model: model.into(),
        dataset: DatasetKind::Digits,
        data: digits(),
        optimizer: opt,
        lr: 0.05,
        steps,
        batch_size: 32,
        crop_padding: Some(1),
        hflip: Some(false),
        seed: 7,
        ..TrainConfig::default()
    };
    c.opt.refresh_every = 5;
    if matches!(opt, OptimizerKind::Adamw | OptimizerKind::Admire) {
        c.lr = 2e-3;
        c.opt.weight_decay = 0.01;
    }
    c
}

#[test]
fn loss_falls_in_100_steps_with_sgd_ire() {
    let mut t = Trainer::new(
        CpuBackend::new(),
        cfg("mlp-small", OptimizerKind::SgdIre, 100),
    )
    .unwrap();
    let losses: Vec<f64> = (0..100).map(|_| t.train_step().unwrap().loss).collect();
    let first = losses[..10].iter().sum::<f64>() / 10.0;
    let last = losses[90..].iter().sum::<f64>() / 10.0;
    println!("mean loss, first 10 steps {first:.4}, last 10 steps {last:.4}");
    // Ten classes start near ln 10 ≈ 2.30; 100 steps must cut the loss at least fourfold.
    assert!(first > 1.8, "{first}");
    assert!(last < first / 4.0, "loss {first} -> {last}");
    let e = t.evaluate().unwrap();
    assert_eq!(e.n, 297);
    assert!(e.acc > 0.8, "test accuracy {}", e.acc);
}

#[test]
fn every_optimizer_trains_a_resnet() {
    for opt in [
        OptimizerKind::Sgd,
        OptimizerKind::SgdIre,
        OptimizerKind::Sam,
        OptimizerKind::SamIre,
        OptimizerKind::Adamw,
        OptimizerKind::Admire,
    ] {
        let mut t = Trainer::new(CpuBackend::new(), cfg("resnet-small", opt, 12)).unwrap();
        let mut refreshed = 0;
        for _ in 0..12 {
            let m = t.train_step().unwrap();
            assert!(m.loss.is_finite());
            refreshed += m.refreshed as usize;
        }
        // K = 5: refreshes at steps 0, 5 and 10 for the IRE variants.
        assert_eq!(refreshed, if opt.is_ire() { 3 } else { 0 }, "{opt}");
    }
}

#[test]
fn same_seed_same_bits() {
    let run = |seed: u64| {
        let mut c = cfg("resnet-small", OptimizerKind::SamIre, 8);
        c.seed = seed;
        let mut t = Trainer::new(CpuBackend::new(), c).unwrap();
        for _ in 0..8 {
            t.train_step().unwrap();
        }
        t.params_host().unwrap()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_ne!(a, c);
}

#[test]
fn batch_norm_statistics_move_only_on_the_training_pass() {
    // One step of SAM-IRE (estimator pass + training pass + SAM's second pass) and one of plain
    // SGD see the same batch with the same parameters: their running statistics must be equal,
    // bit for bit, since only the training pass may update them.
    let stats = |opt| {
        let mut t = Trainer::new(CpuBackend::new(), cfg("resnet-small", opt, 1)).unwrap();
        let m = t.train_step().unwrap();
        (m.refreshed, t.model_state_host().unwrap())
    };
    let (refreshed, a) = stats(OptimizerKind::SamIre);
    let (_, b) = stats(OptimizerKind::Sgd);
    assert!(refreshed, "the estimator pass must have run");
    assert!(!a.is_empty());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} moved"
        );
    }
    // And they did move (from mean 0, variance 1).
    assert!(
        a.iter()
            .any(|(n, v)| n.ends_with("running_mean") && v.iter().any(|x| *x != 0.0))
    );
}

#[test]
fn bad_configs_are_rejected() {
    let base = cfg("mlp-small", OptimizerKind::Sgd, 1);
    let err = |c: TrainConfig| {
        Trainer::new(CpuBackend::new(), c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        err(TrainConfig {
            lr: -1.0,
            ..base.clone()
        })
        .contains("`lr`")
    );
    assert!(
        err(TrainConfig {
            batch_size: 0,
            ..base.clone()
        })
        .contains("`batch_size`")
    );
    assert!(
        err(TrainConfig {
            model: "resnet1000".into(),
            ..base.clone()
        })
        .contains("`model`")
    );
    assert!(
        err(TrainConfig {
            label_smoothing: 1.5,
            ..base.clone()
        })
        .contains("label_smoothing")
    );
    let mut c = base.clone();
    c.optimizer = OptimizerKind::SgdIre;
    c.opt.gamma = 2.0;
    assert!(err(c).contains("`gamma`"));
    let mut c = base.clone();
    c.opt.momentum = -1.0;
    assert!(err(c).contains("`momentum`"));
    let mut c = base.clone();
    c.data = PathBuf::from("/nonexistent/digits.csv");
    assert!(err(c).contains("cannot read"));
    // TOML: unknown keys are errors.
    let dir = std::env::temp_dir().join(format!("ire-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, "model = \"mlp\"\nlearning_rate = 0.1\n").unwrap();
    assert!(
        TrainConfig::from_toml_file(&f)
            .unwrap_err()
            .to_string()
            .contains("learning_rate")
    );
    std::fs::write(&f, "model = \"mlp\"\nlr = 0.3\n[opt]\nkappa = 4.0\n").unwrap();
    let c = TrainConfig::from_toml_file(&f).unwrap();
    assert_eq!((c.lr, c.opt.kappa), (0.3, 4.0));
    // Choices are parsed once, from their config-file names, into enums.
    std::fs::write(
        &f,
        "estimator_batch = \"fixed\"\n[opt]\nestimator = \"abs-gradient\"\n",
    )
    .unwrap();
    let c = TrainConfig::from_toml_file(&f).unwrap();
    assert_eq!(
        (c.estimator_batch, c.opt.estimator),
        (EstimatorBatch::Fixed, EstimatorKind::AbsGradient)
    );
    // ... and written back as the same text (a checkpoint's config is JSON).
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["estimator_batch"], "fixed");
    assert_eq!(json["opt"]["estimator"], "abs-gradient");
    // A name that is none of the choices is refused naming the field and the value.
    std::fs::write(&f, "estimator_batch = \"random\"\n").unwrap();
    let e = TrainConfig::from_toml_file(&f).unwrap_err();
    assert!(matches!(e, ConfigError::Toml { .. }), "{e:?}");
    assert!(
        e.to_string().contains(
            "invalid config `estimator_batch`: unknown value `random`: expected one of current, fixed"
        ),
        "{e}"
    );
    // Out-of-range values are typed errors naming the field and the value.
    match Trainer::new(
        CpuBackend::new(),
        TrainConfig {
            lr: -1.0,
            ..base.clone()
        },
    ) {
        Err(TrainError::Config(ConfigError::OutOfRange { field, value, .. })) => {
            assert_eq!((field, value.as_str()), ("lr", "-1"));
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("lr = -1 accepted"),
    }
}
