//! Image folders in the ImageNet layout: `root/<class>/<image>.{jpg,jpeg,png}`.
//!
//! Classes are the sub-folders in sorted order (label = position), images are read in sorted
//! file-name order, decoded to RGB, and resized to `size` when given (else they must all have
//! the size of the first one). A test split is read with the training split's classes
//! ([`load_image_folder_as`]), so a label means the same class in both.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::dataset::ImageDataset;
use super::error::{DataError, read};

fn list(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.into(),
        source,
    })?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|source| DataError::Io {
            path: dir.into(),
            source,
        })?;
        v.push(e.path());
    }
    v.sort();
    Ok(v)
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

fn decode(path: &Path, size: Option<(u32, u32)>) -> Result<image::RgbImage, DataError> {
    let bytes = read(path)?;
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::Format {
        path: path.into(),
        format: "JPEG/PNG image",
        detail: e.to_string(),
    })?;
    let rgb = img.to_rgb8();
    Ok(match size {
        Some((w, h)) if rgb.dimensions() != (w, h) => {
            image::imageops::resize(&rgb, w, h, image::imageops::FilterType::Triangle)
        }
        _ => rgb,
    })
}

/// Reads `root/<class>/*.{jpg,jpeg,png}`; `size = Some((width, height))` resizes every image.
pub fn load_image_folder(root: &Path, size: Option<(u32, u32)>) -> Result<ImageDataset, DataError> {
    load(root, size, None)
}

/// As [`load_image_folder`], with the labels of `classes` (a training split's class names): a
/// class folder missing here is fine, one not among `classes` is an error naming it.
pub fn load_image_folder_as(
    root: &Path,
    size: Option<(u32, u32)>,
    classes: &[String],
) -> Result<ImageDataset, DataError> {
    load(root, size, Some(classes))
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load(
    root: &Path,
    size: Option<(u32, u32)>,
    known: Option<&[String]>,
) -> Result<ImageDataset, DataError> {
    let classes: Vec<PathBuf> = list(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::Format {
            path: root.into(),
            format: "image folder",
            detail: "no class sub-folder".into(),
        });
    }
    let names: Vec<String> = match known {
        Some(k) => k.to_vec(),
        None => classes.iter().map(|c| name_of(c)).collect(),
    };
    let mut files = Vec::new();
    for dir in &classes {
        let name = name_of(dir);
        let label =
            names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| DataError::ClassNotInTraining {
                    folder: root.into(),
                    class: name.clone(),
                    known: names.clone(),
                })?;
        for f in list(dir)?.into_iter().filter(|p| is_image(p)) {
            files.push((f, label as u32));
        }
    }
    if files.is_empty() {
        return Err(DataError::Format {
            path: root.into(),
            format: "image folder",
            detail: "no .jpg/.jpeg/.png file in the class folders".into(),
        });
    }
    // The decoded images and the planar copy coexist at the peak: twice the pixels.
    let bytes_of = |w: u32, h: u32| 2 * files.len() as u128 * 3 * u128::from(w) * u128::from(h);
    if let Some((w, h)) = size {
        crate::memory::check(
            || {
                format!(
                    "{} images resized to {w}×{h} in {}",
                    files.len(),
                    root.display()
                )
            },
            bytes_of(w, h),
        )?;
    }
    let first = decode(&files[0].0, size)?;
    let (w, h) = first.dimensions();
    crate::memory::check(
        || format!("{} images of {w}×{h} in {}", files.len(), root.display()),
        bytes_of(w, h),
    )?;
    let decoded: Vec<image::RgbImage> = files
        .par_iter()
        .map(|(f, _)| {
            let img = decode(f, Some((w, h)).filter(|_| size.is_some()))?;
            if img.dimensions() != (w, h) {
                return Err(DataError::Inconsistent(format!(
                    "{} is {}x{}, the first image is {w}x{h} (pass a size to resize)",
                    f.display(),
                    img.width(),
                    img.height()
                )));
            }
            Ok(img)
        })
        .collect::<Result<_, _>>()?;
    let (w, h) = (w as usize, h as usize);
    let mut pixels = crate::memory::try_vec(files.len() * 3 * w * h, || {
        format!("the pixels of {}", root.display())
    })?;
    for img in &decoded {
        // Interleaved RGB to planar C × H × W.
        let raw = img.as_raw();
        for c in 0..3 {
            pixels.extend(raw.iter().skip(c).step_by(3));
        }
    }
    Ok(ImageDataset {
        pixels,
        labels: files.iter().map(|(_, l)| *l).collect(),
        channels: 3,
        height: h,
        width: w,
        num_classes: names.len(),
        class_names: names,
    })
}
