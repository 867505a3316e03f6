"""The modern API ``ire_torch.IRE``: around any torch optimizer instance (torch's step plus the
native boost), fused SGD / AdamW with parameter groups of their own learning rate, weight
decay and IRE participation, LR schedulers, the refresh protocol, closures."""

import pytest
import torch

import ire_torch
from official_reference import OfficialIRE
from support import (
    STEPS,
    assert_close,
    assert_masks_equal,
    clone_params,
    feed,
    gradients,
    make_params,
)

ESTIMATE, TRAIN = 0, 1


def _run(opt, ours, ref, theirs, *, gamma, warmup, every, kappa_at, sched=None,
         ref_sched=None, ranked=None, rtol=1e-10):
    """Drives ``opt`` and the reference side by side; checks refresh_due, masks (of our
    ``ranked`` parameters, default all), parameters."""
    ranked = ours if ranked is None else ranked
    for it in range(STEPS):
        due = it >= warmup and (it - warmup) % every == 0
        assert opt.refresh_due() == due, f"step {it}"
        if due:
            est = gradients(ours, it, ESTIMATE)
            feed(ours, est)
            feed(theirs, est)
            tau = opt.refresh()
            assert tau is not None
            assert not opt.refresh_due()
            ref.update_mask(1.0 - gamma)
            opt.zero_grad()
        g = gradients(ours, it, TRAIN)
        feed(ours, g)
        feed(theirs, g)
        kappa, lr, base_lr = kappa_at(it)
        opt.step()
        assert opt.last_report.step == it and opt.last_report.refreshed == due
        ref.descent(kappa, it >= warmup, lr=lr, base_lr=base_lr)
        if sched is not None:
            sched.step()
            ref_sched.step()
        assert_close(ours, theirs, rtol, f"step {it}")
        assert_masks_equal(opt, ranked, [m.bool() for m in ref.mask], f"step {it}")


def test_around_torch_adam_follows_adam_plus_the_boost():
    ours = make_params(torch.float64, seed=10)
    theirs = clone_params(ours)
    adam = torch.optim.Adam(ours, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3)
    opt = ire_torch.IRE(ours, base=adam, kappa=2.0, gamma=0.7, refresh_every=5,
                        warmup_steps=3, beta=0.5, kappa_decay=True)
    assert opt._engine.kind == "external-base"
    assert opt.param_groups is adam.param_groups
    ref = OfficialIRE(theirs, torch.optim.Adam(theirs, lr=1e-2, betas=(0.8, 0.99),
                                               weight_decay=1e-3),
                      beta=0.5, boost="decay")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref.base, T_max=STEPS)
    # κ_t = κ lr_t / lr_max, lr_max the scheduler's initial_lr.
    _run(opt, ours, ref, theirs, gamma=0.7, warmup=3, every=5,
         kappa_at=lambda it: (2.0, opt.param_groups[0]["lr"], 1e-2),
         sched=sched, ref_sched=ref_sched)
    assert opt.step_count == STEPS
    # The torch base's own state is torch's (its moments, its step count).
    assert int(adam.state[ours[0]]["step"]) == STEPS


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_fused_groups_follow_torch_with_their_own_lr_decay_and_participation(base):
    ours = make_params(torch.float64, seed=11)
    theirs = clone_params(ours)

    def groups(ps):
        return [
            {"params": [ps[0]], "lr": 0.02, "weight_decay": 0.1},
            {"params": [ps[1]], "lr": 0.005, "weight_decay": 0.0, "ire": False},
            {"params": [ps[2]]},
        ]

    if base == "adamw":
        opt = ire_torch.IRE(groups(ours), base="adamw", lr=0.01, betas=(0.9, 0.95),
                            weight_decay=0.01, kappa=1.5, gamma=0.6, refresh_every=4,
                            warmup_steps=2, beta=0.2)
        torch_base = torch.optim.AdamW(groups(theirs), lr=0.01, betas=(0.9, 0.95),
                                       weight_decay=0.01)
        kind = "fused AdamW"
    else:
        opt = ire_torch.IRE(groups(ours), base="sgd", lr=0.01, momentum=0.9, nesterov=True,
                            weight_decay=5e-4, kappa=1.5, gamma=0.6, refresh_every=4,
                            warmup_steps=2, beta=0.2)
        torch_base = torch.optim.SGD(groups(theirs), lr=0.01, momentum=0.9, nesterov=True,
                                     weight_decay=5e-4)
        kind = "fused SGD"
    assert opt._engine.kind == kind
    ref = OfficialIRE(theirs, torch_base, beta=0.2, ranked=[theirs[0], theirs[2]])
    lam = lambda e: 0.97**e  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(torch_base, lam)
    _run(opt, ours, ref, theirs, gamma=0.6, warmup=2, every=4,
         kappa_at=lambda it: (1.5, None, None), sched=sched, ref_sched=ref_sched,
         ranked=[ours[0], ours[2]])
    # The group without IRE has an all-zero mask.
    assert not opt.state[ours[1]]["mask"].any()


def test_training_gradient_estimator_needs_no_refresh_call():
    ours = make_params(torch.float64, seed=12)
    theirs = clone_params(ours)
    opt = ire_torch.IRE(ours, base="sgd", lr=0.05, momentum=0.5, kappa=1.0, gamma=0.5,
                        refresh_every=3, estimator="squared_training_gradient")
    ref = OfficialIRE(theirs, torch.optim.SGD(theirs, lr=0.05, momentum=0.5))
    for it in range(12):
        assert not opt.refresh_due()
        g = gradients(ours, it, TRAIN)
        feed(ours, g)
        feed(theirs, g)
        if it % 3 == 0:
            ref.update_mask(0.5)
        opt.step()
        assert opt.last_report.refreshed == (it % 3 == 0)
        ref.descent(1.0, True)
        assert_close(ours, theirs, 1e-10, f"step {it}")


def test_a_due_refresh_must_come_first_and_a_refused_step_changes_nothing():
    ours = make_params(torch.float64, seed=13)
    opt = ire_torch.IRE(ours, base="adamw", lr=1e-2)
    feed(ours, gradients(ours, 0, TRAIN))
    before = [p.detach().clone() for p in ours]
    with pytest.raises(RuntimeError, match="refresh"):
        opt.step()
    for p, b in zip(ours, before):
        assert torch.equal(p, b)
    assert opt.step_count == 0
    opt.refresh()  # from the same .grad: fine for this check
    opt.step()
    assert opt.step_count == 1
    # An extra refresh between scheduled ones is allowed and reported by the next step.
    opt.refresh()
    opt.step()
    assert opt.last_report.refreshed


def test_closure_is_evaluated_with_gradients_and_its_loss_returned():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = ire_torch.IRE([w], base="sgd", lr=0.1, gamma=1.0, kappa=1.0,
                        estimator="squared_training_gradient")

    def closure():
        opt.zero_grad()
        loss = (w**2).sum() / 2
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 7.0
    # γ = 1: every coordinate flat, κ = 1: θ_base = θ − lr·θ (the gradient is θ), then
    # θ_base + 1·(θ_base − θ).
    expected = []
    for t in (1.0, -2.0, 3.0):
        base = t - 0.1 * t
        expected.append(base + 1.0 * (base - t))
    assert w.detach().tolist() == expected


def test_an_sgd_or_adamw_instance_runs_fused():
    ours = make_params(torch.float32, seed=14)
    opt = ire_torch.IRE(ours, base=torch.optim.AdamW(ours, lr=1e-3))
    assert opt._engine.kind == "fused AdamW"
    opt = ire_torch.IRE(ours, base=torch.optim.AdamW(ours, lr=1e-3, amsgrad=True))
    assert opt._engine.kind == "external-base"
    with pytest.raises(ValueError, match="base optimizer's parameters"):
        ire_torch.IRE(ours[:1], base=torch.optim.SGD(ours, lr=0.1))
