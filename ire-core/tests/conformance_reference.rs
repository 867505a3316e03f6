//! The conformance suite run on the reference backend itself: it checks the suite's own
//! expectations (mask rule, save/load, trajectories) against the oracle.

ire_conformance::conformance_tests!(Some(ire_core::Reference));
