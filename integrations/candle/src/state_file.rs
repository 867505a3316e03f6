//! Optimizer state ([`StateDict`]) as a `.safetensors` file.
//!
//! Every entry becomes one tensor named by its path (`base/m.0` is entry `m.0` of the nested
//! dict `base`): counters are `U64` scalars, per-tensor counts `U64` vectors, flags `BOOL`
//! scalars, tensors `F32` / `F64` / `U8` vectors. The file's metadata holds, for each dict at
//! prefix `P`, its optimizer name (`P@optimizer`), format version (`P@version`) and entry order
//! (`P@entries`, one name a line), plus the caller's own keys under `extra.`. Reading rebuilds
//! the dict exactly (entry order included) and checks that nothing is missing or left over.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ire_core::state::{StateDict, StateEntry, StateValue};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result, StateFileProblem};

/// The metadata key naming this layout, and its value.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "ire-optimizer-state/1";
const EXTRA: &str = "extra.";

/// Writes `state` and the `extra` metadata pairs to `path` atomically: a temporary file in the
/// same folder, synced, then renamed over `path`.
///
/// Entry names must not contain `/`, `@` or a line break (the built-in optimizers' never do).
pub fn write_state(path: &Path, state: &StateDict, extra: &[(&str, &str)]) -> Result<()> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut meta = HashMap::new();
    meta.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    for (k, v) in extra {
        meta.insert(format!("{EXTRA}{k}"), v.to_string());
    }
    flatten(path, state, "", &mut tensors, &mut meta)?;
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e.into()))?;
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| file_error(path, e.into()))?;
    write_atomic(path, &bytes)
}

/// Reads a file written by [`write_state`]: the state and the `extra` metadata.
pub fn read_state(path: &Path) -> Result<(StateDict, HashMap<String, String>)> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        op: "read",
        source,
    })?;
    let bad = |p| file_error(path, p);
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.into()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.into()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get(FORMAT_KEY) {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(bad(StateFileProblem::BadMetadata {
                key: FORMAT_KEY.into(),
                value: f.clone(),
                expected: FORMAT,
            }));
        }
        None => {
            return Err(bad(StateFileProblem::MissingMetadata {
                key: FORMAT_KEY.into(),
            }));
        }
    }
    let mut used = HashSet::new();
    let state = unflatten(path, &st, &meta, "", &mut used)?;
    if let Some(name) = st.names().into_iter().find(|n| !used.contains(*n)) {
        return Err(bad(StateFileProblem::ExtraTensor { name: name.into() }));
    }
    let extra = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(EXTRA).map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok((state, extra))
}

fn file_error(path: &Path, problem: StateFileProblem) -> Error {
    Error::StateFile {
        path: path.into(),
        problem,
    }
}

fn flatten(
    path: &Path,
    d: &StateDict,
    prefix: &str,
    tensors: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    meta: &mut HashMap<String, String>,
) -> Result<()> {
    meta.insert(format!("{prefix}@optimizer"), d.optimizer.clone());
    meta.insert(format!("{prefix}@version"), d.format_version.to_string());
    let mut order = Vec::with_capacity(d.entries.len());
    for e in &d.entries {
        if e.name.is_empty() || e.name.contains(['/', '@', '\n']) {
            return Err(file_error(
                path,
                StateFileProblem::BadMetadata {
                    key: format!("{prefix}@entries"),
                    value: e.name.clone(),
                    expected: "entry names without `/`, `@` or line breaks",
                },
            ));
        }
        order.push(e.name.as_str());
        let name = format!("{prefix}{}", e.name);
        let le = |b: &mut Vec<u8>, x: &[u8]| b.extend_from_slice(x);
        let (dtype, shape, bytes) = match &e.value {
            StateValue::U64(x) => (Dtype::U64, vec![], x.to_le_bytes().to_vec()),
            StateValue::Bool(x) => (Dtype::BOOL, vec![], vec![*x as u8]),
            StateValue::U64s(v) => {
                let mut b = Vec::with_capacity(8 * v.len());
                v.iter().for_each(|x| le(&mut b, &x.to_le_bytes()));
                (Dtype::U64, vec![v.len()], b)
            }
            StateValue::F32(v) => {
                let mut b = Vec::with_capacity(4 * v.len());
                v.iter().for_each(|x| le(&mut b, &x.to_le_bytes()));
                (Dtype::F32, vec![v.len()], b)
            }
            StateValue::F64(v) => {
                let mut b = Vec::with_capacity(8 * v.len());
                v.iter().for_each(|x| le(&mut b, &x.to_le_bytes()));
                (Dtype::F64, vec![v.len()], b)
            }
            StateValue::U8(v) => (Dtype::U8, vec![v.len()], v.clone()),
            StateValue::Nested(inner) => {
                flatten(path, inner, &format!("{name}/"), tensors, meta)?;
                continue;
            }
        };
        tensors.push((name, dtype, shape, bytes));
    }
    meta.insert(format!("{prefix}@entries"), order.join("\n"));
    Ok(())
}

fn unflatten(
    path: &Path,
    st: &SafeTensors<'_>,
    meta: &HashMap<String, String>,
    prefix: &str,
    used: &mut HashSet<String>,
) -> Result<StateDict> {
    let bad = |p| file_error(path, p);
    let get = |key: String| {
        meta.get(&key)
            .ok_or(StateFileProblem::MissingMetadata { key })
            .map_err(bad)
    };
    let optimizer = get(format!("{prefix}@optimizer"))?.clone();
    let version_key = format!("{prefix}@version");
    let version = get(version_key.clone())?;
    let format_version = version.parse::<u32>().map_err(|_| {
        bad(StateFileProblem::BadMetadata {
            key: version_key,
            value: version.clone(),
            expected: "a format version number",
        })
    })?;
    let order = get(format!("{prefix}@entries"))?;
    let mut d = StateDict {
        format_version,
        optimizer,
        entries: Vec::new(),
    };
    for entry in order.split('\n').filter(|n| !n.is_empty()) {
        let name = format!("{prefix}{entry}");
        let value = if meta.contains_key(&format!("{name}/@optimizer")) {
            StateValue::Nested(unflatten(path, st, meta, &format!("{name}/"), used)?)
        } else {
            let view = st
                .tensor(&name)
                .map_err(|_| bad(StateFileProblem::MissingTensor { name: name.clone() }))?;
            used.insert(name.clone());
            value_of(&name, &view).map_err(bad)?
        };
        d.entries.push(StateEntry {
            name: entry.to_string(),
            value,
        });
    }
    Ok(d)
}

fn value_of(name: &str, v: &TensorView<'_>) -> std::result::Result<StateValue, StateFileProblem> {
    let data = v.data();
    let shape = v.shape();
    let scalar = shape.is_empty();
    let vector = shape.len() == 1;
    Ok(match v.dtype() {
        Dtype::U64 if scalar => StateValue::U64(u64::from_le_bytes(bytes8(data))),
        Dtype::U64 if vector => StateValue::U64s(
            data.chunks_exact(8)
                .map(|c| u64::from_le_bytes(bytes8(c)))
                .collect(),
        ),
        Dtype::BOOL if scalar && data.len() == 1 && data[0] <= 1 => StateValue::Bool(data[0] == 1),
        Dtype::F32 if vector => StateValue::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 if vector => StateValue::F64(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(bytes8(c)))
                .collect(),
        ),
        Dtype::U8 if vector => StateValue::U8(data.to_vec()),
        dtype => {
            return Err(StateFileProblem::BadTensor {
                name: name.into(),
                dtype,
                shape: shape.to_vec(),
            });
        }
    })
}

/// The first eight bytes of `c` (safetensors has checked the data length against the shape).
fn bytes8(c: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    let n = c.len().min(8);
    b[..n].copy_from_slice(&c[..n]);
    b
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and renamed
/// over `path`, then syncs the folder: a crash leaves the old file or the new one, whole.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |op: &'static str, p: &Path| {
        let p: PathBuf = p.into();
        move |source| Error::Io {
            path: p,
            op,
            source,
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.into(),
        op: "write",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> Result<()> {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename over", path))
    })();
    if written.is_err() {
        // Best effort: the error being reported matters more than the clean-up.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync folder", &dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateDict {
        let mut inner = StateDict::new("adamw");
        inner.put("steps", StateValue::U64(7));
        inner.put("tensor_steps", StateValue::U64s(vec![7, 6]));
        inner.put("m.0", StateValue::F32(vec![1.5, -0.0, f32::MIN_POSITIVE]));
        inner.put("m.1", StateValue::F32(vec![]));
        let mut d = StateDict::new("ire");
        d.put("t", StateValue::U64(u64::MAX));
        d.put("flag", StateValue::Bool(true));
        d.put("h.0", StateValue::F64(vec![1e-300, 2.0]));
        d.put("mask.0", StateValue::U8(vec![0, 1, 1]));
        d.put("base", StateValue::Nested(inner));
        d
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ire-candle-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_state_round_trips_exactly() -> Result<()> {
        let p = temp("rt.safetensors");
        let d = sample();
        write_state(&p, &d, &[("lr_bits", "3f50624dd2f1a9fc")])?;
        let (back, extra) = read_state(&p)?;
        assert_eq!(back, d);
        assert_eq!(
            extra.get("lr_bits").map(String::as_str),
            Some("3f50624dd2f1a9fc")
        );
        fs::remove_file(&p).ok();
        Ok(())
    }

    #[test]
    fn damaged_files_are_typed_errors() -> Result<()> {
        let p = temp("bad.safetensors");
        fs::write(&p, b"not a safetensors file").ok();
        assert!(matches!(
            read_state(&p),
            Err(Error::StateFile {
                problem: StateFileProblem::Container(_),
                ..
            })
        ));
        // A plain safetensors file without the layout's metadata.
        let bytes = safetensors::serialize(
            [(
                "x",
                TensorView::new(Dtype::U8, vec![1], &[3u8])
                    .map_err(|e| file_error(&p, e.into()))?,
            )],
            None,
        )
        .map_err(|e| file_error(&p, e.into()))?;
        fs::write(&p, bytes).ok();
        assert!(matches!(
            read_state(&p),
            Err(Error::StateFile {
                problem: StateFileProblem::MissingMetadata { .. },
                ..
            })
        ));
        assert!(matches!(
            read_state(&temp("missing.safetensors")),
            Err(Error::Io { op: "read", .. })
        ));
        let mut d = sample();
        d.put("a/b", StateValue::U64(1));
        assert!(write_state(&p, &d, &[]).is_err());
        fs::remove_file(&p).ok();
        Ok(())
    }
}
