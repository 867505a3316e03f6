//! Comparisons of parameter vectors.

/// `‖a − b‖∞ / ‖b‖∞` (0 when both are zero; infinite when lengths differ or a value is NaN).
pub fn max_relative_diff<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let (x, y): (f64, f64) = (x.into(), y.into());
        let d = (x - y).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        diff = diff.max(d);
        scale = scale.max(y.abs());
    }
    if diff == 0.0 { 0.0 } else { diff / scale }
}

/// Whether `a` and `b` hold the same bits.
pub fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_diff_and_bits() {
        assert_eq!(max_relative_diff(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        let d = max_relative_diff(&[1.0, 2.5], &[1.0, 2.0]);
        assert!((d - 0.25).abs() < 1e-12);
        assert_eq!(max_relative_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(max_relative_diff(&[f32::NAN], &[1.0]), f64::INFINITY);
        let d = max_relative_diff(&[1.0f64 + 1e-15], &[1.0]);
        assert!(d > 0.0 && d < 2e-15);
        assert!(bits_equal(&[0.5, -0.0], &[0.5, -0.0]));
        assert!(!bits_equal(&[0.0], &[-0.0]));
    }
}
