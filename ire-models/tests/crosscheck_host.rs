//! The model cross-check between the two host backends (reference and CPU): the multi-threaded
//! CPU backend must track the sequential oracle within the same bounds the device backends
//! are held to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use ire_backend_cpu::CpuBackend;
use ire_models::crosscheck::{check_config, check_model, default_text};

#[test]
fn cpu_tracks_the_reference_on_small_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = default_text(&root);
    for model in ["mlp-small", "llama-tiny"] {
        let cfg = check_config(model, &root, &text);
        let c = check_model(ire_core::Reference, CpuBackend::new(), &cfg, 10).unwrap();
        println!(
            "{model}: loss rel {:.2e}, grad rel {:.2e}, step frac {:.2e} (max {:.2e}), curve rel {:.2e}",
            c.loss_rel(),
            c.grad_rel,
            c.step_fraction,
            c.step_max_abs,
            c.curve_rel()
        );
        assert!(c.violations().is_empty(), "{model}: {:?}", c.violations());
    }
}
