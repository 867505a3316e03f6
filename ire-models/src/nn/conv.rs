//! The geometry of a 2-D convolution (or pooling window), and the unfolding of images into
//! the matrix of their receptive fields (im2col) and back, on host slices.

use ire_core::Scalar;

/// Geometry of a 2-D convolution (or pooling window) over one `C×H×W` image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels (ignored by pooling).
    pub c_out: usize,
    /// Kernel height and width.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Rows of the im2col matrix (`C·k·k`).
    pub fn col_rows(&self) -> usize {
        self.c_in * self.k * self.k
    }
    /// Columns of the im2col matrix (`OH·OW`).
    pub fn col_cols(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Input values per image.
    pub fn in_size(&self) -> usize {
        self.c_in * self.h * self.w
    }
    /// Output values per image.
    pub fn out_size(&self) -> usize {
        self.c_out * self.col_cols()
    }
    /// Weight values (`C_out × C_in × k × k`).
    pub fn weight_size(&self) -> usize {
        self.c_out * self.col_rows()
    }
}

/// The output columns `ox` whose input column `ox·stride + kx − pad` lies inside `0..w`.
fn valid_cols(g: &ConvGeom, kx: usize, ow: usize) -> (usize, usize) {
    // ix ≥ 0  ⇔  ox ≥ ceil((pad − kx) / stride);  ix < w  ⇔  ox < ceil((w + pad − kx) / stride).
    let lo = g.pad.saturating_sub(kx).div_ceil(g.stride);
    let hi = (g.w + g.pad).saturating_sub(kx).div_ceil(g.stride).min(ow);
    (lo.min(hi), hi)
}

/// Unfolds one image into the `(C·k·k) × (OH·OW)` matrix of its receptive fields.
pub fn im2col<T: Scalar>(x: &[T], g: &ConvGeom, cols: &mut [T]) {
    let (oh, ow) = (g.oh(), g.ow());
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = (c * g.k + ky) * g.k + kx;
                let out = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                let (lo, hi) = valid_cols(g, kx, ow);
                for oy in 0..oh {
                    let dst = &mut out[oy * ow..(oy + 1) * ow];
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy as usize >= g.h {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    let ix0 = lo * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (d, s) in dst[lo..hi]
                            .iter_mut()
                            .zip(src[ix0..].iter().step_by(g.stride))
                        {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// Folds the matrix back, ADDING each receptive-field value into `dx` (the adjoint of im2col).
pub fn col2im<T: Scalar>(cols: &[T], g: &ConvGeom, dx: &mut [T]) {
    let (oh, ow) = (g.oh(), g.ow());
    for c in 0..g.c_in {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = (c * g.k + ky) * g.k + kx;
                let src = &cols[row * oh * ow..(row + 1) * oh * ow];
                let (lo, hi) = valid_cols(g, kx, ow);
                for oy in 0..oh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy as usize >= g.h || lo >= hi {
                        continue;
                    }
                    let drow = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let s = &src[oy * ow + lo..oy * ow + hi];
                    let ix0 = lo * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        // Contiguous: this form vectorizes, `step_by` does not.
                        for (d, &v) in drow[ix0..ix0 + s.len()].iter_mut().zip(s) {
                            *d = *d + v;
                        }
                    } else {
                        for (d, &v) in drow[ix0..].iter_mut().step_by(g.stride).zip(s) {
                            *d = *d + v;
                        }
                    }
                }
            }
        }
    }
}
