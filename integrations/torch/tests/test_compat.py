"""Each compat class, fed the same gradients as a pure-PyTorch re-implementation of the official
update (official_reference.py), follows it over 40 steps with mask refreshes, an EMA of the
estimate, a decaying κ and a cosine learning rate: float64 parameters within 1e-10 relative
(max-norm per tensor), masks identical at every step."""

import pytest
import torch

from ire_torch.compat import IRE_PARAMS, SAMIRE, SGDIRE, AdamWIRE_PARAMS
from official_reference import OfficialIRE, rank_increase
from support import (
    STEPS,
    assert_close,
    assert_masks_equal,
    clone_params,
    cosine_with_warmup,
    feed,
    gradients,
    make_params,
)

# The official scripts step their schedulers after descent_step (no optimizer.step call).
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")

RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}
ESTIMATE, TRAIN, SECOND = 0, 1, 2  # gradient streams

BASES = [
    pytest.param(torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4), "fused SGD", id="sgd-momentum"),
    pytest.param(torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3), "fused SGD", id="sgd-dampening"),
    pytest.param(torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), "fused SGD", id="sgd-nesterov"),
    pytest.param(torch.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05), "fused AdamW", id="adamw"),
    pytest.param(torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3), "external-base", id="adam-external"),
]


def _check_pointers(params, ptrs):
    assert [p.data_ptr() for p in params] == ptrs, "a parameter's storage moved"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("base,kwargs,kind", BASES)
def test_sgdire_follows_the_official_update(base, kwargs, kind, dtype):
    ours = make_params(dtype)
    theirs = clone_params(ours)
    ptrs = [p.data_ptr() for p in ours]
    opt = SGDIRE(ours, base, rank=0.3, beta=0.5, **kwargs)
    assert opt._engine.kind == kind
    ref = OfficialIRE(theirs, base(theirs, **kwargs), beta=0.5, rule="sharp")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref.base, T_max=STEPS)
    lr0 = kwargs["lr"]
    for it in range(STEPS):
        use_ire = it >= 5
        if use_ire and it % 5 == 0:
            est = gradients(ours, it, ESTIMATE)
            feed(ours, est)
            feed(theirs, est)
            opt.update_mask()
            ref.update_mask(0.3)
            opt.zero_grad()
        assert_masks_equal(opt, ours, ref.mask, f"step {it}")
        g = gradients(ours, it, TRAIN)
        feed(ours, g)
        feed(theirs, g)
        prog = 2.0 * opt.param_groups[0]["lr"] / lr0  # κ decays with the cosine lr
        opt.descent_step(prog, use_ire)
        ref.descent(prog, use_ire)
        assert all(p.grad is None for p in ours)
        sched.step()
        ref_sched.step()
        assert_close(ours, theirs, RTOL[dtype], f"step {it}")
    _check_pointers(ours, ptrs)
    # k = int(72 * 0.3) = 21 sharp: the 21st largest estimate is the threshold, itself flat.
    flat = sum(int(opt.state[p]["mask"].sum()) for p in ours)
    assert flat == 72 - 21 + 1


SAM_BASES = [
    pytest.param(torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4), False, "SAM + fused SGD", id="sam-sgd"),
    pytest.param(torch.optim.SGD, dict(lr=0.1, momentum=0.9), True, "SAM + fused SGD", id="asam-sgd"),
    pytest.param(torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05), False, "SAM + fused AdamW", id="sam-adamw"),
    pytest.param(torch.optim.Adam, dict(lr=1e-2), True, "SAM + external-base", id="asam-adam-external"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("base,kwargs,adaptive,kind", SAM_BASES)
def test_samire_follows_the_official_update(base, kwargs, adaptive, kind, dtype):
    ours = make_params(dtype, seed=1)
    theirs = clone_params(ours)
    ptrs = [p.data_ptr() for p in ours]
    rho = 0.5 if adaptive else 0.05
    opt = SAMIRE(ours, base, rank=0.3, beta=0.25, rho=rho, adaptive=adaptive, **kwargs)
    assert opt._engine.kind == kind
    ref = OfficialIRE(theirs, base(theirs, **kwargs), beta=0.25, rule="sharp", rho=rho,
                      adaptive=adaptive)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref.base, T_max=STEPS)
    for it in range(STEPS):
        use_ire = it >= 3
        if use_ire and it % 5 == 0:
            est = gradients(ours, it, ESTIMATE)
            feed(ours, est)
            feed(theirs, est)
            opt.update_mask()
            ref.update_mask(0.3)
            opt.zero_grad()
        g1, g2 = gradients(ours, it, TRAIN), gradients(ours, it, SECOND)
        feed(ours, g1)
        feed(theirs, g1)
        opt.ascent_step()
        ref.ascent()
        assert all(p.grad is None for p in ours)
        assert_close(ours, theirs, RTOL[dtype], f"step {it} perturbed")
        feed(ours, g2)
        feed(theirs, g2)
        prog = 1.5 * opt.param_groups[0]["lr"] / kwargs["lr"]
        opt.descent_step(prog, use_ire)
        ref.descent(prog, use_ire)
        sched.step()
        ref_sched.step()
        assert_close(ours, theirs, RTOL[dtype], f"step {it}")
        assert_masks_equal(opt, ours, ref.mask, f"step {it}")
    _check_pointers(ours, ptrs)


ADMIRE_CASES = [
    pytest.param(True, True, torch.optim.AdamW, "fused AdamW", id="rank-increase-prog-decay"),
    pytest.param(False, True, torch.optim.AdamW, "fused AdamW", id="prog-decay"),
    pytest.param(True, False, torch.optim.AdamW, "fused AdamW", id="rank-increase"),
    pytest.param(True, True, torch.optim.Adam, "external-base", id="adam-external"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank_inc,prog_decay,base,kind", ADMIRE_CASES)
def test_adamwire_params_follows_the_official_update(rank_inc, prog_decay, base, kind, dtype):
    ours = make_params(dtype, seed=2)
    theirs = clone_params(ours)
    ptrs = [p.data_ptr() for p in ours]
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    rank, prog, beta, warmup, horizon = 0.6, 2.0, 0.3, 4, 800
    opt = AdamWIRE_PARAMS(ours, base, rank=rank, rank_increase=rank_inc, prog=prog,
                          prog_decay=prog_decay, beta=beta, **kwargs)
    assert opt._engine.kind == kind
    ref = OfficialIRE(theirs, base(theirs, **kwargs), beta=beta, rule="admire",
                      boost="decay" if prog_decay else "mask")
    refreshes = 0
    for it in range(STEPS):
        lr = cosine_with_warmup(it, kwargs["lr"], warmup, STEPS)
        for g in opt.param_groups + ref.base.param_groups:
            g["lr"] = lr
        if it > warmup and it % 5 == 1:
            est = gradients(ours, it, ESTIMATE)
            feed(ours, est)
            feed(theirs, est)
            opt.update_mask(it - warmup, horizon)
            rank_t = rank_increase(rank, it - warmup, horizon) if rank_inc else rank
            ref.update_mask(rank_t)
            opt.zero_grad(set_to_none=True)
            refreshes += 1
        assert_masks_equal(opt, ours, ref.mask, f"step {it}")
        g = gradients(ours, it, TRAIN)
        feed(ours, g)
        feed(theirs, g)
        use_ire = it > warmup
        opt.descent_step(lr, kwargs["lr"], use_ire)
        ref.descent(prog, use_ire, lr=lr, base_lr=kwargs["lr"])
        assert_close(ours, theirs, RTOL[dtype], f"step {it}")
    assert refreshes == 7
    _check_pointers(ours, ptrs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "base,kind",
    [
        pytest.param(lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=0.1), "fused AdamW", id="adamw"),
        pytest.param(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), "fused SGD", id="sgd"),
        pytest.param(lambda ps: torch.optim.RMSprop(ps, lr=1e-3), "external-base", id="rmsprop-external"),
    ],
)
def test_ire_params_follows_the_official_update(base, kind, dtype):
    ours = make_params(dtype, seed=3)
    theirs = clone_params(ours)
    ptrs = [p.data_ptr() for p in ours]
    rank, prog, horizon = 0.6, 1.5, 800
    opt = IRE_PARAMS(ours, base(ours), rank=rank, rank_increase=True, prog=prog)
    assert opt._engine.kind == kind
    ref = OfficialIRE(theirs, base(theirs), rule="flat", estimator="abs", boost="select",
                      mask_dtype=torch.bool)
    base_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt.base_optimizer, T_max=STEPS)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref.base, T_max=STEPS)
    for it in range(STEPS):
        if it >= 2 and it % 5 == 2:
            est = gradients(ours, it, ESTIMATE)
            feed(ours, est)
            feed(theirs, est)
            opt.update_mask(it - 2, horizon)
            ref.update_mask(rank_increase(rank, it - 2, horizon))
            # As the official class, the gradients are now their absolute values.
            for p in ours:
                assert bool((p.grad >= 0).all())
            opt.zero_grad()
        assert_masks_equal(opt, ours, ref.mask, f"step {it}")
        g = gradients(ours, it, TRAIN)
        feed(ours, g)
        feed(theirs, g)
        # The official step reads `prog` each time: a script may decay it.
        opt.prog = prog * (1.0 - it / (2 * STEPS))
        opt.descent_step(use_ire=it >= 2)
        ref.descent(opt.prog, it >= 2)
        base_sched.step()
        ref_sched.step()
        assert_close(ours, theirs, RTOL[dtype], f"step {it}")
        # The step does not zero the gradients (the official one does not).
        assert all(p.grad is not None for p in ours)
        opt.zero_grad()
        assert all(p.grad is None for p in ours)
    _check_pointers(ours, ptrs)


def test_admire_track_name_file_writes_the_official_ratios(tmp_path):
    ours = make_params(torch.float64, seed=4)
    opt = AdamWIRE_PARAMS(ours, torch.optim.AdamW, rank=0.3, rank_increase=False, prog=1.0,
                          prog_decay=False, beta=0.0, lr=1e-3)
    opt.init_id_map([("w", ours[0]), ("b", ours[1])])
    feed(ours, gradients(ours, 0, ESTIMATE))
    path = tmp_path / "track.txt"
    with open(path, "w") as f:
        opt.update_mask(0, 100, track_name_file=f)
    ratios = {}
    for name, p in [("w", ours[0]), ("b", ours[1]), (str(id(ours[2])), ours[2])]:
        m = opt.state[p]["mask"]
        ratios[name] = (m.bool().sum() / m.numel()).item()
    assert path.read_text() == f"{ratios}"
    assert sum(int(opt.state[p]["mask"].sum()) for p in ours) == 72 - 21 + 1


def test_official_state_reads_and_signatures():
    ours = make_params(torch.float64, seed=5)
    opt = SGDIRE(ours, torch.optim.SGD, rank=0.5, beta=0.0, lr=0.1)
    # Before any refresh the mask is all zeros (the official init_mask) in the dtype.
    assert torch.equal(opt.state[ours[0]]["mask"], torch.zeros_like(ours[0]))
    assert torch.equal(opt.state[ours[0]]["fisher"], torch.zeros_like(ours[0]))
    feed(ours, gradients(ours, 0, ESTIMATE))
    opt.update_mask()
    h = opt.state[ours[1]]["fisher"]
    assert torch.equal(h, torch.square(ours[1].grad))
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.base_optimizer.param_groups is opt.param_groups
    assert opt.defaults["lr"] == 0.1 and "momentum" in opt.defaults
    with pytest.raises(KeyError):
        opt.state[torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    # init_mask / init_fisher reset the state as the official constructor leaves it.
    assert opt.state[ours[1]]["mask"].any()
    opt.init_mask()
    assert not any(opt.state[p]["mask"].any() for p in ours)
    assert opt.state[ours[1]]["fisher"].any()
    opt.init_fisher()
    assert not any(opt.state[p]["fisher"].any() for p in ours)
    opt.init_last_step_data()
    feed(ours, gradients(ours, 1, TRAIN))
    before = [p.detach().clone() for p in ours]
    opt.descent_step(5.0, True)  # all sharp now: the plain SGD step
    for p, b, g in zip(ours, before, gradients(ours, 1, TRAIN)):
        assert torch.equal(p.detach(), b - 0.1 * g)
