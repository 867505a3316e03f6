"""state_dict round trips: saved through torch.save / torch.load into a fresh optimizer, the
state reads back bit for bit, and the two optimizers then take bit-identical steps. A state
that does not fit is refused and leaves the optimizer as it was."""

import io

import pytest
import torch

import ire_torch
from ire_torch.compat import IRE_PARAMS, SAMIRE, SGDIRE, AdamWIRE_PARAMS
from support import clone_params, feed, gradients, make_params


def _ire(base, **kw):
    def make(ps):
        b = base(ps) if callable(base) else base
        return ire_torch.IRE(ps, base=b, refresh_every=2, beta=0.5, **kw)

    def step(opt, ps, it):
        if opt.refresh_due():
            feed(ps, gradients(ps, it, 0))
            opt.refresh()
        feed(ps, gradients(ps, it, 1))
        opt.step()

    return make, step


def _sgdire(base, **kw):
    def make(ps):
        return SGDIRE(ps, base, rank=0.3, beta=0.5, **kw)

    def step(opt, ps, it):
        if it % 2 == 0:
            feed(ps, gradients(ps, it, 0))
            opt.update_mask()
        feed(ps, gradients(ps, it, 1))
        opt.descent_step(1.5, True)

    return make, step


def _samire():
    def make(ps):
        return SAMIRE(ps, torch.optim.SGD, rank=0.3, beta=0.5, rho=0.1, lr=0.1, momentum=0.9)

    def step(opt, ps, it):
        if it % 2 == 0:
            feed(ps, gradients(ps, it, 0))
            opt.update_mask()
        feed(ps, gradients(ps, it, 1))
        opt.ascent_step()
        feed(ps, gradients(ps, it, 2))
        opt.descent_step(1.5, True)

    return make, step


def _admire():
    def make(ps):
        return AdamWIRE_PARAMS(ps, torch.optim.AdamW, rank=0.6, rank_increase=True, prog=2.0,
                               prog_decay=True, beta=0.5, lr=1e-2)

    def step(opt, ps, it):
        if it % 2 == 1:
            feed(ps, gradients(ps, it, 0))
            opt.update_mask(it, 800)
        feed(ps, gradients(ps, it, 1))
        opt.descent_step(1e-2 * (1 - it / 40), 1e-2, True)

    return make, step


def _ire_params(base):
    def make(ps):
        return IRE_PARAMS(ps, base(ps), rank=0.4, rank_increase=False, prog=1.0)

    def step(opt, ps, it):
        if it % 2 == 0:
            feed(ps, gradients(ps, it, 0))
            opt.update_mask(it, 100)
        feed(ps, gradients(ps, it, 1))
        opt.descent_step()
        opt.zero_grad()

    return make, step


CASES = [
    pytest.param(*_ire("adamw", lr=1e-2), id="ire-adamw"),
    pytest.param(*_ire("sgd", lr=0.1, momentum=0.9, kappa_decay=True), id="ire-sgd"),
    pytest.param(*_ire(lambda ps: torch.optim.Adam(ps, lr=1e-2)), id="ire-around-adam"),
    pytest.param(*_sgdire(torch.optim.SGD, lr=0.1, momentum=0.9), id="SGDIRE"),
    pytest.param(*_sgdire(torch.optim.RAdam, lr=1e-2), id="SGDIRE-radam-external"),
    pytest.param(*_samire(), id="SAMIRE"),
    pytest.param(*_admire(), id="AdamWIRE_PARAMS"),
    pytest.param(*_ire_params(lambda ps: torch.optim.AdamW(ps, lr=1e-2)), id="IRE_PARAMS"),
]


def _same(a, b, where="state"):
    """Deep equality, tensors bit for bit (dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {a.keys()} vs {b.keys()}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
        return
    if isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
        return
    assert a == b and type(a) is type(b), f"{where}: {a!r} vs {b!r}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make,step", CASES)
def test_round_trip_is_bit_identical(make, step, dtype):
    ps = make_params(dtype, seed=20)
    opt = make(ps)
    for it in range(5):
        step(opt, ps, it)
    saved = opt.state_dict()
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    qs = clone_params(ps)
    opt2 = make(qs)
    opt2.load_state_dict(loaded)
    _same(opt2.state_dict(), saved)
    for it in range(5, 11):
        step(opt, ps, it)
        step(opt2, qs, it)
        for p, q in zip(ps, qs):
            assert torch.equal(p, q), f"step {it}"
            assert torch.equal(opt.state[p]["mask"], opt2.state[q]["mask"])
    _same(opt2.state_dict(), opt.state_dict())


def test_a_state_that_does_not_fit_is_refused_and_changes_nothing():
    ps = make_params(torch.float64, seed=21)
    make, step = _ire("adamw", lr=1e-2)
    opt = make(ps)
    for it in range(3):
        step(opt, ps, it)
    before = opt.state_dict()

    # Other sizes.
    other = make([torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in [(5,), (2,), (4,)]])
    with pytest.raises(ValueError, match="sizes"):
        opt.load_state_dict(other.state_dict())
    # Another dtype.
    other = make(make_params(torch.float32, seed=21))
    with pytest.raises(ValueError, match="dtype"):
        opt.load_state_dict(other.state_dict())
    # Another class.
    other = SGDIRE(make_params(torch.float64, seed=21), torch.optim.SGD, rank=0.3, beta=0.0, lr=0.1)
    with pytest.raises(ValueError, match="class"):
        opt.load_state_dict(other.state_dict())
    # Not ours at all (a torch optimizer's).
    with pytest.raises(ValueError, match="ire_torch"):
        opt.load_state_dict(torch.optim.AdamW(ps).state_dict())
    # A damaged engine state: an entry removed, then a moment of the wrong length.
    bad = opt.state_dict()
    entries = bad["ire_torch"]["engine"]["entries"]
    bad["ire_torch"]["engine"]["entries"] = [e for e in entries if e[0] != "mask.1"]
    with pytest.raises(ValueError, match="mask.1"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    base = next(e for e in bad["ire_torch"]["engine"]["entries"] if e[0] == "base")[1]
    for e in base["entries"]:
        if e[0] == "m.0":
            e[1] = e[1][:-1]
    with pytest.raises(ValueError, match="tensor 0 .*expected 35, found 34"):
        opt.load_state_dict(bad)
    # A bad hyper-parameter in the saved options.
    bad = opt.state_dict()
    bad["ire_torch"]["ire"]["gamma"] = 2.0
    with pytest.raises(ValueError, match="gamma"):
        opt.load_state_dict(bad)
    _same(opt.state_dict(), before)
    step(opt, ps, 3)  # and it still works
