//! The exact eigen-projection form on small problems.

mod projector {
    use ire_backend_cpu::projector::*;

    #[test]
    fn jacobi_diagonalizes_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, vectors (1, -1)/√2 and (1, 1)/√2.
        let (w, v) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!((w[0] - 1.0).abs() < 1e-14 && (w[1] - 3.0).abs() < 1e-14);
        let r = core::f64::consts::FRAC_1_SQRT_2;
        assert!((v[0].abs() - r).abs() < 1e-14 && (v[0] + v[1]).abs() < 1e-14);
        assert!((v[2] - v[3]).abs() < 1e-14);
        // A 4×4 matrix: A·x = λ·x for every pair.
        let a = [
            4.0, 1.0, -2.0, 2.0, 1.0, 2.0, 0.0, 1.0, -2.0, 0.0, 3.0, -2.0, 2.0, 1.0, -2.0, -1.0,
        ];
        let (w, v) = symmetric_eigen(&a, 4).unwrap();
        for r in 0..4 {
            for i in 0..4 {
                let ax: f64 = (0..4).map(|j| a[i * 4 + j] * v[r * 4 + j]).sum();
                assert!((ax - w[r] * v[r * 4 + i]).abs() < 1e-12);
            }
        }
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn hand_made_basis_projects_onto_flat_directions() {
        // Sharp direction e0 in 3-D: P u removes the first coordinate.
        let p = ExactProjector::from_sharp_basis(3, vec![1.0, 0.0, 0.0]).unwrap();
        assert_eq!(
            p.project_flat(&[5.0, 2.0, -1.0]).unwrap(),
            vec![0.0, 2.0, -1.0]
        );
        let mut theta = [1.0, 1.0, 1.0];
        p.ire_step(&mut theta, &[1.0, 1.0, 1.0], 0.1, 4.0).unwrap();
        // sharp: 1 − 0.1·1; flat: 1 − 0.1·(1 + 4).
        assert_eq!(theta, [0.9, 0.5, 0.5]);
        // A rotated basis: s = (1, 1)/√2 in 2-D; P u = ((u0 − u1)/2, (u1 − u0)/2).
        let r = core::f64::consts::FRAC_1_SQRT_2;
        let p = ExactProjector::from_sharp_basis(2, vec![r, r]).unwrap();
        let pu = p.project_flat(&[3.0, 1.0]).unwrap();
        assert!((pu[0] - 1.0).abs() < 1e-15 && (pu[1] + 1.0).abs() < 1e-15);
        assert!(ExactProjector::from_sharp_basis(2, vec![1.0, 1.0]).is_err());
        assert!(ExactProjector::from_sharp_basis(2, vec![1.0, 0.0, 0.0]).is_err());
    }

    #[test]
    fn projector_from_hessian_keeps_the_small_eigen_directions() {
        let p = ExactProjector::from_hessian(&[1.0, 0.0, 0.0, 100.0], 2, 1).unwrap();
        let pu = p.project_flat(&[2.0, 3.0]).unwrap();
        assert!((pu[0] - 2.0).abs() < 1e-15 && pu[1].abs() < 1e-15);
    }
}
