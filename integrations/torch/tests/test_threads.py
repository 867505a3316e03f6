"""A step called from a thread other than the one that imported ire_torch completes (the
importing thread is one of the kernels' workers; the others serve every other thread)."""

import threading

import torch

import ire_torch
from support import feed, gradients


def test_a_step_from_another_thread_completes():
    # Large enough that the kernels split the work across the pool.
    ps = [torch.nn.Parameter(torch.randn(1 << 18))]
    opt = ire_torch.IRE(ps, base="adamw", lr=1e-3, estimator="squared_training_gradient")
    done = []

    def run():
        for it in range(3):
            feed(ps, gradients(ps, it, 1))
            opt.step()
        done.append(opt.step_count)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the step did not complete"
    assert done == [3]
