//! Weights as `.safetensors` files (the `safetensors` crate's format), for use outside this
//! project.
//!
//! Tensors are stored as `F32`, little-endian, row-major. The format orders tensors in the file
//! by name, so [`import`] returns them sorted by name whatever order [`export`] was given.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::atomic;
use super::error::{ArtifactError, Result};

/// A named tensor: name, shape (row-major; empty for a scalar), values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` and the string `metadata` (the file's `__metadata__`) to `path` atomically.
///
/// Each shape's product must equal its data's length; names must be unique.
pub fn export(path: &Path, tensors: &[NamedTensor], metadata: &[(String, String)]) -> Result<()> {
    let mut names = HashSet::new();
    let mut bytes = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if !names.insert(name.as_str()) {
            return Err(ArtifactError::invalid(
                path,
                format!("two tensors are named {name:?}"),
            ));
        }
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(data.len()) {
            return Err(ArtifactError::invalid(
                path,
                format!(
                    "tensor {name:?} has shape {shape:?} but {} values",
                    data.len()
                ),
            ));
        }
        bytes.push(
            data.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    let st_err = |e: safetensors::SafeTensorError| ArtifactError::Safetensors {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), raw) in tensors.iter().zip(&bytes) {
        views.push((
            name.as_str(),
            TensorView::new(Dtype::F32, shape.clone(), raw).map_err(st_err)?,
        ));
    }
    let info = if metadata.is_empty() {
        None
    } else {
        let mut map = HashMap::with_capacity(metadata.len());
        for (k, v) in metadata {
            if map.insert(k.clone(), v.clone()).is_some() {
                return Err(ArtifactError::invalid(
                    path,
                    format!("metadata key {k:?} repeats"),
                ));
            }
        }
        Some(map)
    };
    let mut file = safetensors::serialize(views, info).map_err(st_err)?;
    sort_metadata(&mut file);
    atomic::write_bytes(path, &file)
}

/// Rewrites the `__metadata__` object of a serialized file with its keys in sorted order, so
/// that the same tensors and metadata always give the same bytes (the `safetensors` crate
/// takes the metadata as a `HashMap` and writes it in that map's random iteration order). The
/// sorted object has the same length: same keys and values, compact JSON both times. Anything
/// unexpected leaves the file as it is.
fn sort_metadata(file: &mut [u8]) {
    const KEY: &[u8] = b"{\"__metadata__\":";
    let Some(len) = file
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
    else {
        return;
    };
    let Some(header) = file.get_mut(8..8usize.saturating_add(len)) else {
        return;
    };
    if !header.starts_with(KEY) {
        return;
    }
    let object = &header[KEY.len()..];
    let mut stream =
        serde_json::Deserializer::from_slice(object).into_iter::<BTreeMap<String, String>>();
    let Some(Ok(map)) = stream.next() else {
        return;
    };
    let end = stream.byte_offset();
    if let Ok(sorted) = serde_json::to_vec(&map)
        && sorted.len() == end
    {
        header[KEY.len()..KEY.len() + end].copy_from_slice(&sorted);
    }
}

/// Reads every tensor of a `.safetensors` file, in file order (sorted by name for files written
/// by [`export`]). Tensors that are not `F32` are an error naming the tensor and its type.
pub fn import(path: &Path) -> Result<Vec<NamedTensor>> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::io(path, "read", e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_error(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| st_error(path, e))?;
    let mut out = Vec::with_capacity(st.len());
    for name in header.offset_keys() {
        let view = st.tensor(&name).map_err(|e| st_error(path, e))?;
        if view.dtype() != Dtype::F32 {
            return Err(ArtifactError::Safetensors {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor {name:?} is {:?}; only F32 is supported",
                    view.dtype()
                ),
            });
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push((name, view.shape().to_vec(), values));
    }
    Ok(out)
}

/// The string metadata (`__metadata__`) of a `.safetensors` file, sorted by key.
pub fn import_metadata(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::io(path, "read", e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| st_error(path, e))?;
    let mut meta: Vec<(String, String)> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    meta.sort();
    Ok(meta)
}

fn st_error(path: &Path, e: safetensors::SafeTensorError) -> ArtifactError {
    ArtifactError::Safetensors {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}
