//! Synchronized batch norm: the batch-norm layers' per-image sums joined over the processes of
//! a data-parallel group ([`BnSync`] over a [`Collective`]).
//!
//! The trainer activates it for each forward/backward pass of a training step, with every
//! process's number of examples in that pass ([`GroupBnSync::set`]); each process's images
//! are a consecutive run of the batch and the processes hold them in rank order, so the
//! concatenation in rank order is the order of the images in the batch. Costs, per batch-norm
//! layer and pass over `N` images (all processes) of `C` channels: two all-gathers of `8·C`
//! bytes per image in the forward (sums, then centred sums), one of `16·C` in the backward;
//! each process receives `8·C·N` (forward, twice) and `16·C·N` bytes (padded to the largest
//! share).

use std::cell::RefCell;
use std::rc::Rc;

use ire_core::collective::BufMut;
use ire_core::{Collective, Error, Result};

use crate::nn::batch_norm::BnSync;

/// The [`BnSync`] of a data-parallel group: inactive until [`GroupBnSync::set`] gives the
/// examples of every process in the pass under way.
pub struct GroupBnSync {
    comm: Rc<dyn Collective>,
    /// Examples of each rank in the pass under way (`None`: inactive).
    counts: RefCell<Option<Vec<usize>>>,
}

impl GroupBnSync {
    /// Inactive, over `comm`.
    pub fn new(comm: Rc<dyn Collective>) -> Self {
        GroupBnSync {
            comm,
            counts: RefCell::new(None),
        }
    }

    /// Activates it for a pass in which rank `q` holds `counts[q]` examples (the ranks' runs
    /// of the batch in rank order), or deactivates it (`None`).
    pub fn set(&self, counts: Option<Vec<usize>>) {
        *self.counts.borrow_mut() = counts;
    }
}

impl BnSync for GroupBnSync {
    fn active(&self) -> bool {
        self.counts.borrow().is_some()
    }

    fn gather(&self, local: &[f64], width: usize) -> Result<Vec<f64>> {
        let counts = self.counts.borrow();
        let counts = counts
            .as_deref()
            .ok_or_else(|| Error::Protocol("synchronized batch norm while inactive".into()))?;
        let mine = counts.get(self.comm.rank()).copied().unwrap_or(0) * width;
        if local.len() != mine || counts.len() != self.comm.world_size() {
            return Err(Error::SizeMismatch {
                what: "synchronized batch norm: this process's per-image sums".into(),
                expected: mine,
                found: local.len(),
            });
        }
        // Every share padded to the largest, so that the all-gather's blocks are equal.
        let block = counts.iter().copied().max().unwrap_or(0) * width;
        let mut send = local.to_vec();
        send.resize(block, 0.0);
        let mut all = vec![0f64; block * counts.len()];
        self.comm
            .all_gather(send.as_slice().into(), BufMut::F64(&mut all))?;
        let mut out = Vec::with_capacity(counts.iter().sum::<usize>() * width);
        for (q, &n) in counts.iter().enumerate() {
            out.extend_from_slice(&all[q * block..q * block + n * width]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::ops::Range;

    use super::*;
    use crate::data::Batch;
    use crate::nn::{BnMode, BnShape, BnState, ConvNetOps};
    use crate::rng::Rng;
    use ire_backend_cpu::CpuBackend;
    use ire_core::Backend;
    use ire_core::collective::threads::ThreadGroup;

    const S: BnShape = BnShape { n: 7, c: 3, hw: 5 };
    /// γ at 0, β at 3 of the parameter (and gradient) arena.
    const OFF: (usize, usize) = (0, 3);

    /// What a batch norm's forward and backward leave: `y`, the running and saved statistics,
    /// `dx`, and the gradient arena (`dγ`, `dβ`).
    type Out = (Vec<f32>, Vec<Vec<f32>>, Vec<f32>, Vec<f32>);

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| (r.uniform() * 4.0 - 1.0) as f32).collect()
    }

    /// Forward (training, running statistics updated) and backward over the images `range`
    /// of the batch, synced over `sync` when given.
    fn pass(range: Range<usize>, sync: Option<&GroupBnSync>) -> Out {
        let b = CpuBackend::new();
        let per = S.c * S.hw;
        let s = BnShape {
            n: range.len(),
            ..S
        };
        let x = b
            .alloc_from(&random(S.n * per, 1)[range.start * per..range.end * per])
            .unwrap();
        let dy = b
            .alloc_from(&random(S.n * per, 2)[range.start * per..range.end * per])
            .unwrap();
        let p = b.alloc_from(&random(2 * S.c, 3)).unwrap();
        let (mut y, mut dx) = (b.alloc(s.n * per).unwrap(), b.alloc(s.n * per).unwrap());
        let mut g = b.alloc_from(&[0.5f32; 6]).unwrap();
        let mut st: Vec<_> = [0.0f32, 1.0, 0.0, 0.0]
            .iter()
            .map(|&v| b.alloc_from(&[v; 3]).unwrap())
            .collect();
        let [rm, rv, sm, si] = &mut st[..] else {
            unreachable!()
        };
        let state = BnState {
            running_mean: rm,
            running_var: rv,
            save_mean: sm,
            save_invstd: si,
        };
        let consts = (0.1, 1e-5);
        match sync {
            Some(sync) => {
                b.batch_norm_synced(&x, &mut y, s, &p, OFF, state, true, consts, sync)
                    .unwrap();
                b.batch_norm_backward_synced(
                    &x,
                    &dy,
                    &mut dx,
                    s,
                    (&p, OFF.0),
                    (sm, si),
                    (&mut g, OFF.0, OFF.1),
                    sync,
                )
                .unwrap();
            }
            None => {
                let mode = BnMode::Train {
                    update_running: true,
                };
                b.batch_norm(&x, &mut y, s, &p, OFF.0, OFF.1, state, mode, 0.1, 1e-5)
                    .unwrap();
                b.batch_norm_backward(&x, &dy, &mut dx, s, &p, OFF.0, sm, si, &mut g, 0, 3)
                    .unwrap();
            }
        }
        let stats = st.iter().map(|v| b.to_vec(v).unwrap()).collect();
        (
            b.to_vec(&y).unwrap(),
            stats,
            b.to_vec(&dx).unwrap(),
            b.to_vec(&g).unwrap(),
        )
    }

    #[test]
    fn synced_batch_norm_over_ranks_is_one_process_holding_the_whole_batch() {
        let whole = pass(0..S.n, None);
        for w in [1, 2, 3] {
            let ranks = ThreadGroup::ranks(w).unwrap();
            let parts = Batch::micro_ranges(S.n, w);
            let counts: Vec<usize> = parts.iter().map(|r| r.len()).collect();
            let outs: Vec<Out> = std::thread::scope(|sc| {
                let handles: Vec<_> = ranks
                    .into_iter()
                    .zip(parts.clone())
                    .map(|(c, r)| {
                        let counts = counts.clone();
                        sc.spawn(move || {
                            let sync = GroupBnSync::new(Rc::new(c));
                            assert!(!sync.active());
                            sync.set(Some(counts));
                            assert!(sync.active());
                            pass(r, Some(&sync))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            // y, dx and every statistic: bit for bit those of the whole batch.
            let y: Vec<f32> = outs.iter().flat_map(|o| o.0.clone()).collect();
            let dx: Vec<f32> = outs.iter().flat_map(|o| o.2.clone()).collect();
            assert!(y == whole.0, "y on {w} ranks");
            assert!(dx == whole.2, "dx on {w} ranks");
            for o in &outs {
                assert!(o.1 == whole.1, "statistics on {w} ranks");
            }
            // dγ, dβ: each rank adds its own examples' sums (the gradient's all-reduce adds
            // the ranks'); the sum over ranks is the whole batch's up to f32 rounding of each
            // rank's share (|Σ| ≤ 35 here: 2^-24 · 35 · 3 ranks < 1e-5).
            for k in 0..6 {
                let sum: f32 = outs.iter().map(|o| o.3[k] - 0.5).sum();
                let d = (sum + 0.5 - whole.3[k]).abs();
                assert!(d <= 1e-5, "gradient {k} on {w} ranks: {d}");
            }
        }
        // Without a group's pass under way it refuses rather than guess.
        let c = ThreadGroup::ranks(1).unwrap().pop().unwrap();
        let sync = GroupBnSync::new(Rc::new(c));
        assert!(sync.gather(&[1.0], 1).is_err());
        sync.set(Some(vec![2]));
        assert!(sync.gather(&[1.0], 1).is_err());
        assert_eq!(sync.gather(&[1.0, 2.0], 1).unwrap(), [1.0, 2.0]);
    }
}
