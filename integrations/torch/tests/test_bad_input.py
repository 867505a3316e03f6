"""Bad input raises a Python exception with a clear message and changes nothing; nothing
crashes the interpreter (every case below runs in the test process)."""

import pytest
import torch

import ire_torch
from ire_torch.compat import SAMIRE, SGDIRE, AdamWIRE_PARAMS
from support import feed, gradients, make_params


def _snapshot(opt, ps):
    return [p.detach().clone() for p in ps], opt.state_dict()


def _unchanged(opt, ps, snap):
    params, state = snap
    for p, b in zip(ps, params):
        assert torch.equal(p, b)
    after = opt.state_dict()["ire_torch"]["engine"]
    for (name, a), (_, b) in zip(state["ire_torch"]["engine"]["entries"], after["entries"]):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
        elif not isinstance(a, dict):
            assert a == b, name


def _stepped(make):
    ps = make_params(torch.float64, seed=30)
    opt = make(ps)
    feed(ps, gradients(ps, 0, 0))
    opt.refresh()
    feed(ps, gradients(ps, 0, 1))
    opt.step()
    return opt, ps


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ps: ire_torch.IRE(ps, base="adamw", refresh_every=3), id="fused"),
        pytest.param(lambda ps: ire_torch.IRE(ps, base=torch.optim.Adam(ps), refresh_every=3), id="around-adam"),
    ],
)
def test_a_non_finite_gradient_is_refused(make, bad):
    opt, ps = _stepped(make)
    snap = _snapshot(opt, ps)
    g = gradients(ps, 1, 1)
    g[2].view(-1)[5] = bad
    feed(ps, g)
    with pytest.raises(ValueError, match=r"non-finite .* gradient of parameter 2 .*unchanged"):
        opt.step()
    _unchanged(opt, ps, snap)
    # A good gradient then steps as usual.
    feed(ps, gradients(ps, 1, 1))
    opt.step()
    assert opt.step_count == 2


def test_a_non_finite_estimate_keeps_the_mask():
    opt, ps = _stepped(lambda ps: ire_torch.IRE(ps, base="sgd", lr=0.1, refresh_every=1))
    snap = _snapshot(opt, ps)
    masks = [opt.state[p]["mask"] for p in ps]
    g = gradients(ps, 1, 0)
    g[0][1, 1] = float("nan")
    feed(ps, g)
    with pytest.raises(ValueError, match="estimator gradient tensor 0 .*mask kept"):
        opt.refresh()
    _unchanged(opt, ps, snap)
    assert all(torch.equal(opt.state[p]["mask"], m) for p, m in zip(ps, masks))
    assert opt.refresh_due()


def test_sam_refuses_a_non_finite_gradient_before_moving():
    ps = make_params(torch.float64, seed=31)
    opt = SAMIRE(ps, torch.optim.SGD, rank=0.3, beta=0.0, rho=0.05, lr=0.1)
    before = [p.detach().clone() for p in ps]
    g = gradients(ps, 0, 1)
    g[1][0] = float("nan")
    feed(ps, g)
    with pytest.raises(ValueError, match="non-finite"):
        opt.ascent_step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    # The descent without an ascent is out of order.
    feed(ps, gradients(ps, 0, 2))
    with pytest.raises(RuntimeError, match="perturb"):
        opt.descent_step(1.0, True)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gamma=1.5), r"`gamma` = 1.5: allowed range is \[0, 1\]"),
        (dict(gamma=float("nan")), "gamma"),
        (dict(kappa=-1.0), "kappa"),
        (dict(refresh_every=0), "refresh_every"),
        (dict(beta=1.0), "beta"),
        (dict(rank_increase_horizon=5), "horizon"),
        (dict(estimator="fisher"), "unknown estimator \"fisher\"; expected one of squared_gradient"),
        (dict(threshold="top"), "unknown threshold"),
        (dict(betas=(1.0, 0.999)), "beta1"),
        (dict(eps=-1.0), "eps"),
        (dict(lr=-0.1, base="sgd", momentum=-0.5), "momentum"),
    ],
)
def test_bad_hyper_parameters_are_named(kwargs, match):
    kwargs = dict(kwargs)
    base = kwargs.pop("base", "adamw")
    with pytest.raises(ValueError, match=match):
        ire_torch.IRE(make_params(torch.float32), base=base, **kwargs)


def test_bad_options_of_the_compat_classes():
    ps = make_params(torch.float64)
    with pytest.raises(ValueError, match="rank must be in"):
        SGDIRE(ps, torch.optim.SGD, rank=1.5, beta=0.0, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAMIRE(ps, torch.optim.SGD, rank=0.1, beta=0.0, rho=-1.0, lr=0.1)
    opt = AdamWIRE_PARAMS(ps, torch.optim.AdamW, rank=0.5, rank_increase=True, prog=1.0,
                          prog_decay=True, beta=0.0, lr=1e-3)
    feed(ps, gradients(ps, 0, 0))
    with pytest.raises(ValueError, match="max_iter_decay"):
        opt.update_mask(1, 9)
    with pytest.raises(RuntimeError, match="set_descent"):
        opt.step()
    with pytest.raises(ValueError, match="base_lr"):
        opt.descent_step(1e-3, 0.0, True)
    with pytest.raises(ValueError, match="prog"):
        SGDIRE(ps, torch.optim.SGD, rank=0.5, beta=0.0, lr=0.1).descent_step(-1.0, True)
    # A missing estimator gradient is named.
    opt = SGDIRE(ps, torch.optim.SGD, rank=0.5, beta=0.0, lr=0.1)
    feed(ps, gradients(ps, 0, 0))
    ps[1].grad = None
    with pytest.raises(ValueError, match=r"estimator gradient \(.grad\) of parameter 1 is None"):
        opt.update_mask()


def test_tensors_the_kernels_cannot_take_are_refused_by_name():
    # Another device.
    with pytest.raises(ValueError, match="parameter 0 is on device `meta`"):
        ire_torch.IRE([torch.nn.Parameter(torch.zeros(4, device="meta"))])
    if torch.cuda.is_available() and not ire_torch._native.CUDA:
        with pytest.raises(ValueError, match="parameter 0 is on device `cuda:0`"):
            ire_torch.IRE([torch.nn.Parameter(torch.zeros(4, device="cuda"))])
    # Integer and half tensors.
    with pytest.raises(TypeError, match=r"parameter 0 has dtype torch.int64; expected torch.float32 or torch.float64"):
        ire_torch.IRE([torch.zeros(4, dtype=torch.int64)], base="sgd")
    with pytest.raises(TypeError, match="torch.float16"):
        ire_torch.IRE([torch.nn.Parameter(torch.zeros(4, dtype=torch.float16))], base="sgd")
    # Mixed dtypes.
    with pytest.raises(TypeError, match="parameter 1 has dtype torch.float32, but the optimizer's parameters are torch.float64"):
        ire_torch.IRE([torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
                       torch.nn.Parameter(torch.zeros(4))])
    # A non-contiguous parameter.
    with pytest.raises(ValueError, match="parameter 0 is not contiguous"):
        ire_torch.IRE([torch.nn.Parameter(torch.zeros(3, 4).t())])
    # Two parameters sharing memory.
    storage = torch.zeros(10)
    with pytest.raises(ValueError, match="parameter 1 shares memory with parameter 0"):
        ire_torch.IRE([storage[:6], storage[4:]], base="sgd")
    # Not a tensor at all (the native engine's own check).
    with pytest.raises(TypeError, match="parameter 0 must be a torch.Tensor"):
        ire_torch._native.check_parameters([[1.0, 2.0]])


def test_bad_gradients_are_refused_by_name_and_change_nothing():
    opt, ps = _stepped(lambda ps: ire_torch.IRE(ps, base="adamw", refresh_every=5))
    snap = _snapshot(opt, ps)
    # A non-contiguous gradient of the right shape.
    g = gradients(ps, 1, 1)
    g[0] = torch.randn(5, 7, dtype=torch.float64).t()
    feed(ps, g)
    ps[0].grad = g[0]  # feed() copies contiguously; assign the strided view itself
    with pytest.raises(ValueError, match="gradient of parameter 0 is not contiguous"):
        opt.step()
    # A sparse gradient.
    feed(ps, gradients(ps, 1, 1))
    ps[1].grad = ps[1].grad.to_sparse()
    with pytest.raises(ValueError, match="gradient of parameter 1 has layout torch.sparse_coo"):
        opt.step()
    # A gradient that is (a view of) its own parameter.
    feed(ps, gradients(ps, 1, 1))
    ps[2].grad = ps[2].detach()
    with pytest.raises(ValueError, match="parameter 2 shares memory with gradient of parameter 2"):
        opt.step()
    _unchanged(opt, ps, snap)


def test_parameter_groups_are_fixed_after_creation():
    ps = make_params(torch.float32)
    opt = ire_torch.IRE(ps[:2], base="sgd", lr=0.1)
    with pytest.raises(RuntimeError, match="fixed"):
        opt.add_param_group({"params": [ps[2]]})
    with pytest.raises(ValueError, match="momentum"):
        ire_torch.IRE([{"params": ps, "momentum": 0.9}], base="sgd")
    with pytest.raises(ValueError, match="base must be"):
        ire_torch.IRE(ps, base="lion")
