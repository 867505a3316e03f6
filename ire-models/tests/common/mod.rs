//! What several test files share: the `IRE_REQUIRE` policy (a missing device or data set is a
//! skip with a printed line, or a failure when `IRE_REQUIRE` names it), the shared data folder
//! beside the repository, and the device backends of this build.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// Whether `IRE_REQUIRE` (comma-separated) names `what` (`data`, `opencl`, `cuda`, `nvrtc`).
pub fn required(what: &str) -> bool {
    std::env::var("IRE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(what))
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path` when it exists; otherwise a skip line for `test` and `None`, or a failure when
/// `IRE_REQUIRE` names `data` (the test command sets it, so a missing data set fails there).
pub fn data_file(path: PathBuf, test: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(
        !required("data"),
        "{test}: {} is missing and IRE_REQUIRE names `data`",
        path.display()
    );
    println!("skipped {test}: {} is absent", path.display());
    None
}

/// A file or folder of the shared data folder beside the repository (`../shared/data/REL`),
/// under the policy of [`data_file`].
pub fn shared_data(rel: &str, test: &str) -> Option<PathBuf> {
    data_file(root().join("../shared/data").join(rel), test)
}

/// The OpenCL backend, or `None` with a skip line for `test` (a failure when `IRE_REQUIRE`
/// names `opencl`: `ire_backend_opencl::optional` errs then).
#[cfg(feature = "opencl")]
pub fn opencl(test: &str) -> Option<ire_backend_opencl::OpenClBackend> {
    use std::sync::OnceLock;
    // One device per test process: opening one builds its programs.
    static DEV: OnceLock<Option<ire_backend_opencl::OpenClBackend>> = OnceLock::new();
    let d = DEV
        .get_or_init(|| match ire_backend_opencl::optional() {
            Ok(d) => d,
            Err(e) => panic!("OpenCL backend required (IRE_REQUIRE) but not usable: {e}"),
        })
        .clone();
    if d.is_none() {
        println!("skipped {test}: no OpenCL device");
    }
    d
}

/// The CUDA backend, or `None` with a skip line for `test` (a failure when `IRE_REQUIRE` names
/// `cuda`).
#[cfg(feature = "cuda")]
pub fn cuda(test: &str) -> Option<ire_backend_cuda::CudaBackend> {
    match ire_backend_cuda::from_env() {
        Ok(b) => Some(b),
        Err(e) if required("cuda") => panic!("{test}: IRE_REQUIRE names cuda but no GPU: {e}"),
        Err(e) => {
            println!("skipped {test}: {e}");
            None
        }
    }
}

/// A short run of `model` with `opt` on the data shipped in `data/`: the digits for an image
/// model, the opening of Moby Dick (characters, context 16) for a language model; no flips.
pub fn shipped_data_cfg(
    model: &str,
    opt: ire_models::train::OptimizerKind,
) -> ire_models::train::TrainConfig {
    use ire_models::train::{DatasetKind, TrainConfig};
    let text = model
        .parse::<ire_models::models::ModelSpec>()
        .is_ok_and(|m| m.is_lm());
    TrainConfig {
        model: model.into(),
        dataset: if text {
            DatasetKind::Text
        } else {
            DatasetKind::Digits
        },
        data: root().join(if text {
            "data/moby-dick-opening.txt"
        } else {
            "data/digits.csv.gz"
        }),
        tokenizer: "char".into(),
        context: 16,
        optimizer: opt,
        hflip: Some(false),
        ..TrainConfig::default()
    }
}
