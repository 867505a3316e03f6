"""Zero copy: every update is in place (each parameter keeps its storage, autograd is told of
the write), and once the optimizer state exists a step allocates nothing parameter-sized —
neither in the extension (its counting allocator) nor through torch (the profiler), refreshes
included."""

import pytest
import torch

import ire_torch
from ire_torch import _native
from ire_torch.compat import SAMIRE, AdamWIRE_PARAMS
from support import gradients

# The smallest parameter has 16384 elements: above the fixed-size working buffers of the
# threshold selection (about 4K values per worker and pass, whatever N is), so anything the
# counter sees would scale with the parameters.
SHAPES = [(256, 128), (16384,), (64, 64, 8)]


def _assign(ps, grads):
    # Plain assignment (no copy), so the profiled loop allocates nothing of the test's own.
    for p, g in zip(ps, grads):
        p.grad = g


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def _ire(kind):
    def make(ps):
        if kind == "adam-external":
            return ire_torch.IRE(ps, base=torch.optim.Adam(ps, lr=1e-3), refresh_every=3)
        return ire_torch.IRE(ps, base=kind, lr=1e-3, momentum=0.9, refresh_every=3) \
            if kind == "sgd" else ire_torch.IRE(ps, base=kind, lr=1e-3, refresh_every=3)

    def step(opt, ps, it):
        if opt.refresh_due():
            _assign(ps, GRADS[(it, 0)])
            opt.refresh()
        _assign(ps, GRADS[(it, 1)])
        opt.step()

    return make, step


def _admire():
    def make(ps):
        return AdamWIRE_PARAMS(ps, torch.optim.AdamW, rank=0.4, rank_increase=False, prog=2.0,
                               prog_decay=True, beta=0.5, lr=1e-3)

    def step(opt, ps, it):
        if it % 3 == 0:
            _assign(ps, GRADS[(it, 0)])
            opt.update_mask(it, 1000)
        _assign(ps, GRADS[(it, 1)])
        opt.descent_step(1e-3 * (1 - it / 100), 1e-3)

    return make, step


def _samire():
    def make(ps):
        return SAMIRE(ps, torch.optim.SGD, rank=0.2, beta=0.0, rho=0.05, lr=0.1, momentum=0.9)

    def step(opt, ps, it):
        if it % 3 == 0:
            _assign(ps, GRADS[(it, 0)])
            opt.update_mask()
        _assign(ps, GRADS[(it, 1)])
        opt.ascent_step()
        _assign(ps, GRADS[(it, 2)])
        opt.descent_step(2.0, True)

    return make, step


# Gradients of every step and stream, made before anything is measured.
GRADS = {}

CASES = [
    pytest.param(*_ire("adamw"), True, id="ire-adamw"),
    pytest.param(*_ire("sgd"), True, id="ire-sgd"),
    pytest.param(*_ire("adam-external"), False, id="ire-around-adam"),
    pytest.param(*_admire(), True, id="AdamWIRE_PARAMS"),
    pytest.param(*_samire(), True, id="SAMIRE"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make,step,fused", CASES)
def test_steps_are_in_place_and_allocate_nothing_parameter_sized(make, step, fused, dtype):
    ps = _params(dtype)
    GRADS.clear()
    for it in range(12):
        for stream in range(3):
            GRADS[(it, stream)] = gradients(ps, it, stream)
    ptrs = [p.data_ptr() for p in ps]
    opt = make(ps)
    for it in range(3):  # the state is allocated by the first step and refresh
        step(opt, ps, it)
    before = [p.detach().clone() for p in ps]
    threshold = min(p.numel() for p in ps) * ps[0].element_size()
    versions = [p._version for p in ps]
    _native.count_allocations_from(threshold)
    try:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            for it in range(3, 12):  # three refreshes among them
                step(opt, ps, it)
    finally:
        counted = _native.counted_allocations()
        _native.count_allocations_from(2**63)
    assert counted == (0, 0), f"the extension allocated {counted[0]} blocks ({counted[1]} bytes)"
    if fused:
        # No torch op ran by the optimizer allocates that much (with a torch base, torch's own
        # step allocates its temporaries: not ours to count).
        big = [e.name for e in prof.events() if e.cpu_memory_usage >= threshold]
        assert big == [], big
    assert any(not torch.equal(a, b) for a, b in zip(ps, before))
    assert [p.data_ptr() for p in ps] == ptrs
    assert all(p._version > v for p, v in zip(ps, versions))


def test_the_counter_sees_large_allocations():
    # The instrument itself: building a large optimizer state is counted.
    ps = _params(torch.float32)
    opt = ire_torch.IRE(ps, base="adamw", lr=1e-3)
    _assign(ps, gradients(ps, 0, 0))
    opt.refresh()  # allocates the estimate and mask of every tensor
    _native.count_allocations_from(16384 * 4)
    try:
        opt2 = ire_torch.IRE(ps, base="adamw", lr=1e-3)
        opt2.refresh()
    finally:
        count, size = _native.counted_allocations()
        _native.count_allocations_from(2**63)
    assert count >= 3 and size >= 4 * sum(p.numel() for p in ps)
