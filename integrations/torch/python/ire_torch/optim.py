"""``ire_torch.IRE``: IRE around SGD, AdamW (fused kernels) or any torch optimizer."""

import torch

from ._engine import EngineOptimizer, fused_base_of

_BASES = ("sgd", "adamw")
_GROUP_KEYS = {"params", "lr", "weight_decay", "ire", "param_names", "initial_lr"}


class IRE(EngineOptimizer):
    r"""IRE (Implicit Regularization Enhancement) around a base optimizer.

    Every ``refresh_every`` steps after ``warmup_steps``, the estimate
    ``h <- beta h + (1 - beta) g_hat**2`` is refreshed from an estimator gradient and the
    coordinates with the smallest estimates (a fraction ``gamma`` of all parameters, one
    threshold over every tensor) are marked flat; every step after the warm-up, the base step
    is taken ``(1 + kappa_t)`` times longer along the flat coordinates.

    Args:
        params: parameters or parameter groups, as for any torch optimizer. A group may set
            ``lr``, ``weight_decay`` and ``ire`` (``False``: the group is neither ranked nor
            boosted). Parameters with ``requires_grad=False`` take no part in IRE.
        base: ``"sgd"`` or ``"adamw"`` (the whole step runs in the fused native kernels), or
            a ``torch.optim.Optimizer`` instance over the same parameters (torch takes the base
            step; the snapshot, the mask and the boost run natively). An exact
            ``torch.optim.SGD`` / ``AdamW`` instance with no state yet runs fused as well.
        lr: learning rate (fused bases).
        kappa: the boost ``kappa >= 0``.
        gamma: the flat fraction in ``[0, 1]`` (the official code's ``rank`` is ``1 - gamma``).
        refresh_every: mask refresh interval.
        warmup_steps: steps with IRE off (no refresh, no boost).
        beta: EMA factor of the estimate, in ``[0, 1)``.
        estimator: ``"squared_gradient"`` (the official ``g_hat**2``: call ``refresh()`` after
            an estimator backward when ``refresh_due()``), ``"abs_gradient"`` (``|g_hat|``), or
            ``"squared_training_gradient"`` (the step's own gradient; no refresh call).
        threshold: ``"sharp_top_k"`` (the CIFAR scripts), ``"flat_kth_smallest"``
            (``ire_new.py``) or ``"admire"`` (``AdamWIRE_PARAMS``' switch).
        kappa_decay: ``kappa_t = kappa * lr_t / lr_max`` (the official ``prog_decay``), with
            ``lr_t`` the first group's learning rate and ``lr_max`` the ``lr_max`` argument, or
            that group's ``initial_lr`` (set by torch's LR schedulers), or its learning rate when
            the optimizer was created.
        rank_increase_horizon: the official ``rank_increase`` schedule of gamma over that many
            steps after the warm-up (at least 20).
        momentum, dampening, nesterov: SGD's (same in every group).
        betas, eps: AdamW's (same in every group).
        weight_decay: SGD's coupled or AdamW's decoupled weight decay (default 0 for SGD,
            0.01 for AdamW, as torch).
        check_finite: refuse a step whose gradient holds a NaN or an infinity (raises
            ``ValueError``; parameters and state unchanged). One extra read of the gradients.
    """

    def __init__(
        self,
        params,
        base="adamw",
        *,
        lr=1e-3,
        kappa=2.0,
        gamma=0.8,
        refresh_every=10,
        warmup_steps=0,
        beta=0.0,
        estimator="squared_gradient",
        threshold="sharp_top_k",
        kappa_decay=False,
        lr_max=None,
        rank_increase_horizon=None,
        momentum=0.0,
        dampening=0.0,
        nesterov=False,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=None,
        check_finite=True,
    ):
        ire = {
            "kappa": float(kappa),
            "gamma": float(gamma),
            "refresh_every": int(refresh_every),
            "warmup_steps": int(warmup_steps),
            "beta": float(beta),
            "estimator": estimator,
            "threshold": threshold,
            "rank_increase_horizon": rank_increase_horizon,
            "kappa_lr_max": None,
        }
        if isinstance(base, torch.optim.Optimizer):
            self.base_optimizer = base
            mine = [p for g in base.param_groups for p in g["params"]]
            if params is not None:
                given = [p for p in _flatten(params)]
                if {id(p) for p in given} != {id(p) for p in mine} or len(given) != len(mine):
                    raise ValueError(
                        "IRE(params, base=<optimizer>): params must be the base optimizer's "
                        "parameters (or None)"
                    )
            super().__init__(base.param_groups, {})
            self.param_groups = base.param_groups
            kind, options = fused_base_of(base)
            self.defaults.update(base.defaults)
        elif isinstance(base, str) and base in _BASES:
            self.base_optimizer = None
            kind = base
            if weight_decay is None:
                weight_decay = 0.0 if base == "sgd" else 1e-2
            super().__init__(
                params, {"lr": lr, "weight_decay": float(weight_decay), "ire": True}
            )
            for g in self.param_groups:
                extra = set(g) - _GROUP_KEYS
                if extra:
                    raise ValueError(
                        f"IRE(base={base!r}): parameter groups may set lr, weight_decay and "
                        f"ire; got {', '.join(sorted(extra))} (pass a torch optimizer "
                        "instance as base for other per-group options)"
                    )
            if base == "sgd":
                options = {
                    "momentum": float(momentum),
                    "dampening": float(dampening),
                    "nesterov": bool(nesterov),
                    "weight_decay": 0.0,
                }
            else:
                b1, b2 = betas
                options = {
                    "beta1": float(b1),
                    "beta2": float(b2),
                    "eps": float(eps),
                    "weight_decay": 0.0,
                }
        else:
            raise ValueError(
                f"IRE: base must be 'sgd', 'adamw' or a torch.optim.Optimizer instance, got "
                f"{base!r}"
            )
        self._kappa_decay = bool(kappa_decay)
        self._lr_max = None if lr_max is None else float(lr_max)
        self._lr0 = float(self.param_groups[0]["lr"])
        if self._kappa_decay:
            ire["kappa_lr_max"] = self._current_lr_max()
        self._setup(
            base_kind=kind,
            base_options=options,
            ire=ire,
            cadence="scheduled",
            check_finite=check_finite,
        )

    def _current_lr_max(self):
        if self._lr_max is not None:
            return self._lr_max
        return float(self.param_groups[0].get("initial_lr", self._lr0))

    def _kappa_lr(self):
        if not self._kappa_decay:
            return 0.0
        self._configure(kappa_lr_max=self._current_lr_max())
        return float(self.param_groups[0]["lr"])

    def refresh_due(self):
        """Whether the next step refreshes the mask: run an estimator backward (e.g. the loss
        at labels sampled from the model's own softmax) and call ``refresh()`` before it."""
        return self._engine.refresh_due()

    def refresh(self):
        """Refreshes the estimate and the mask now from every participating parameter's
        ``.grad`` (the estimator gradient), for the next step. A refresh that is due is then
        done; calling it when none is due adds a refresh. A NaN or infinite estimate raises
        ``ValueError`` and keeps the mask. Returns the threshold (None when none was needed)."""
        return self._refresh()

    def step(self, closure=None):
        """One step. ``closure`` (re-evaluating the loss) runs first, with gradients on.
        (No autograd context is needed: the fused step runs no torch op, and a torch base
        optimizer sets its own.)"""
        if self._fused:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._fused_step(self._kappa_lr())
            return loss
        return self._external_step(
            self._kappa_lr(), lambda: self.base_optimizer.step(closure)
        )

    @property
    def step_count(self):
        """Steps taken."""
        return self._engine.step_count

    def _extra_state(self):
        return {"_lr_max": self._lr_max, "_lr0": self._lr0}


def _flatten(params):
    if isinstance(params, torch.Tensor):
        return [params]
    out = []
    for x in params:
        if isinstance(x, dict):
            out.extend(x["params"] if not isinstance(x["params"], torch.Tensor) else [x["params"]])
        else:
            out.append(x)
    return out
