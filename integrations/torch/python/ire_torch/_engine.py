"""The machinery every ire_torch optimizer shares: the native engine over the parameters,
gathering tensors for a step, the base optimizer (fused or torch's), the state view and
state_dict.

A subclass calls ``torch.optim.Optimizer.__init__`` (directly or through the official
constructor sequence), then ``_setup`` with the engine's options.
"""

from collections.abc import Mapping

import torch

from . import _native

# The torch optimizers whose step runs in the fused kernels, and the options each must have
# (the same in every group) for the fused step to be exactly the torch one.
_SGD_FIXED = ("momentum", "dampening", "nesterov")
_ADAMW_FIXED = ("betas", "eps")
_MUST_BE_OFF = ("maximize", "amsgrad", "capturable", "differentiable")


def _scalar(x):
    return x if type(x) is float else float(x.item() if isinstance(x, torch.Tensor) else x)


def fused_base_of(base):
    """``("sgd", options)`` or ``("adamw", options)`` when ``base`` (a torch optimizer
    instance) is exactly ``torch.optim.SGD`` / ``torch.optim.AdamW`` with options the fused
    kernels compute identically and no state yet; ``("external", {})`` otherwise."""
    kind = type(base)
    if kind not in (torch.optim.SGD, torch.optim.AdamW) or len(base.state) > 0:
        return "external", {}
    groups = base.param_groups
    for g in groups:
        if any(g.get(k, False) for k in _MUST_BE_OFF):
            return "external", {}
        if kind is torch.optim.AdamW and not g.get("decoupled_weight_decay", True):
            return "external", {}
    fixed = _SGD_FIXED if kind is torch.optim.SGD else _ADAMW_FIXED
    first = groups[0]
    if any(g.get(k) != first.get(k) for g in groups for k in fixed):
        return "external", {}
    if kind is torch.optim.SGD:
        return "sgd", {
            "momentum": _scalar(first["momentum"]),
            "dampening": _scalar(first["dampening"]),
            "nesterov": bool(first["nesterov"]),
            "weight_decay": 0.0,
        }
    b1, b2 = first["betas"]
    return "adamw", {
        "beta1": _scalar(b1),
        "beta2": _scalar(b2),
        "eps": _scalar(first["eps"]),
        "weight_decay": 0.0,
    }


def fixed_options(kind, groups):
    """The group options a fused step fixes at construction (checked at every step): those of
    a torch SGD / AdamW whose groups the fused step took over (groups without them: none)."""
    names = {"sgd": _SGD_FIXED, "adamw": _ADAMW_FIXED}.get(kind, ())
    if not any(k in g for g in groups for k in names):
        names = ()
    return [tuple(g.get(k) for k in names) for g in groups], names


class _StateView(Mapping):
    """``opt.state[p]``: a dict of copies of the optimizer's per-parameter state (the mask,
    the estimate), made when read. The state itself lives in the native engine."""

    def __init__(self, opt):
        self._opt = opt

    def __getitem__(self, p):
        i = self._opt._index.get(id(p))
        if i is None or self._opt._params[i] is not p:
            raise KeyError(p)
        return self._opt._param_state(i, p)

    def __iter__(self):
        return iter(self._opt._params)

    def __len__(self):
        return len(self._opt._params)

    def __repr__(self):
        return f"<state of {len(self)} parameters, read from the native engine>"


_increment_version = getattr(torch._C, "_increment_version", None)


def _bump_versions(params):
    # The engine writes the parameters' memory directly; tell autograd they changed, as an
    # in-place torch op would (so a graph that saved an old value fails loudly).
    if _increment_version is not None:
        _increment_version(params)
    else:
        torch.autograd.graph.increment_version(params)


class EngineOptimizer(torch.optim.Optimizer):
    """Base of the ire_torch optimizers (a ``torch.optim.Optimizer``)."""

    _engine = None
    #: What the last step did (``step``, ``refreshed``, ``threshold``, ``kappa``), or None.
    last_report = None

    # ---- construction -------------------------------------------------------------------

    def _setup(self, *, base_kind, base_options, ire, sam=None, cadence, check_finite):
        params = [p for g in self.param_groups for p in g["params"]]
        if not params:
            raise ValueError("the optimizer got no parameters")
        dtype = _native.check_parameters(params)
        self._params = params
        self._index = {id(p): i for i, p in enumerate(params)}
        # The groups' own parameter lists and sizes, to notice a change cheaply at each step.
        self._group_lists = [(g["params"], len(g["params"])) for g in self.param_groups]
        self._takes_part = [
            bool(p.requires_grad) and bool(g.get("ire", True))
            for g in self.param_groups
            for p in g["params"]
        ]
        self._ire = dict(ire)
        self._fused = base_kind != "external"
        self._fixed, self._fixed_names = fixed_options(base_kind, self.param_groups)
        self._check_finite = bool(check_finite)
        self._engine = _native.Engine(
            dtype=dtype,
            sizes=[p.numel() for p in params],
            groups=len(self.param_groups),
            group_of=[j for j, g in enumerate(self.param_groups) for _ in g["params"]],
            takes_part=self._takes_part,
            base=base_kind,
            base_options=base_options,
            ire=self._ire,
            sam=sam,
            cadence=cadence,
            device=str(params[0].device),
        )
        self.state = _StateView(self)

    def add_param_group(self, param_group):
        if self._engine is not None:
            raise RuntimeError(
                f"{type(self).__name__}: the parameters are fixed when the optimizer is created; "
                "create a new optimizer to add a parameter group"
            )
        super().add_param_group(param_group)

    def _configure(self, **changes):
        """Changes IRE options (state kept); a no-op when nothing changes."""
        ire = self._ire
        if any(ire.get(k) != v for k, v in changes.items()):
            new = dict(ire, **changes)
            self._engine.configure(new)
            self._ire = new

    # ---- one step -----------------------------------------------------------------------

    def _current_params(self):
        groups = self.param_groups
        lists = self._group_lists
        if len(groups) != len(lists) or any(
            g["params"] is not l or len(l) != n for g, (l, n) in zip(groups, lists)
        ):
            params = [p for g in groups for p in g["params"]]
            if len(params) != len(self._params) or any(
                a is not b for a, b in zip(params, self._params)
            ):
                raise RuntimeError(
                    f"{type(self).__name__}: the parameter groups changed after the optimizer "
                    "was created"
                )
            self._group_lists = [(g["params"], len(g["params"])) for g in groups]
        return self._params

    def _gather(self):
        """Parameters, gradients, and each group's lr and weight decay (fused steps)."""
        params = self._current_params()
        names = self._fixed_names
        if names and [tuple(g.get(k) for k in names) for g in self.param_groups] != self._fixed:
            raise ValueError(
                f"{type(self).__name__}: the group options {', '.join(self._fixed_names)} are "
                "fixed by the fused step when the optimizer is created, and changed since"
            )
        groups = self.param_groups
        lrs = [_scalar(g["lr"]) for g in groups]
        wds = [_scalar(g.get("weight_decay", 0.0)) for g in groups]
        return params, [p.grad for p in params], lrs, wds

    def _fused_step(self, kappa_lr):
        params, grads, lrs, wds = self._gather()
        self.last_report = self._engine.step(
            params, grads, lrs, wds, kappa_lr, self._check_finite
        )
        _bump_versions(params)

    def _external_step(self, kappa_lr, base_step):
        """Snapshot and refresh in the engine, ``base_step()`` in torch, then the boost."""
        params = self._current_params()
        self._engine.begin_external(
            params, [p.grad for p in params], kappa_lr, self._check_finite
        )
        try:
            result = base_step()
        except BaseException:
            self._engine.cancel_external()
            raise
        self.last_report = self._engine.finish_external(params)
        _bump_versions(params)
        return result

    def _refresh(self, gamma=None):
        params = self._current_params()
        ests = [p.grad if part else None for p, part in zip(params, self._takes_part)]
        return self._engine.refresh(params, ests, gamma)

    # ---- state --------------------------------------------------------------------------

    def _mask(self, i, p):
        out = torch.empty(p.numel(), dtype=torch.uint8, device=p.device)
        self._engine.mask_into(i, out)
        return out.view(p.shape)

    def _estimate(self, i, p):
        out = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        self._engine.estimate_into(i, out)
        return out.view(p.shape)

    def _param_state(self, i, p):
        return {"mask": self._mask(i, p).bool(), "estimate": self._estimate(i, p)}

    def _extra_state(self):
        """Attributes of the optimizer itself saved with the state (subclasses add theirs)."""
        return {}

    def _load_extra_state(self, extra):
        for k, v in extra.items():
            setattr(self, k, v)

    def state_dict(self):
        """Everything needed to resume bit for bit: the groups' options (torch's format, the
        parameters by index), the native engine's state (moments, estimate, mask, counters;
        tensors copied), and the torch base optimizer's state when torch takes the base step."""
        groups, start = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = list(range(start, start + n))
            groups.append(packed)
            start += n
        base = getattr(self, "base_optimizer", None)
        return {
            "state": {},
            "param_groups": groups,
            "ire_torch": {
                "class": type(self).__name__,
                "kind": self._engine.kind,
                "dtype": self._engine.dtype,
                "sizes": self._engine.sizes,
                "ire": dict(self._ire),
                "engine": self._engine.save(),
                "base": None if self._fused or base is None else base.state_dict(),
                "extra": self._extra_state(),
            },
        }

    def load_state_dict(self, state_dict):
        """Restores a ``state_dict()`` of the same class over parameters of the same sizes.
        All or nothing: on any error the optimizer is left as it was."""
        mine = state_dict.get("ire_torch") if isinstance(state_dict, dict) else None
        if mine is None:
            raise ValueError(
                "not a state dict of an ire_torch optimizer (no 'ire_torch' entry); the "
                "official classes' state dicts hold no base-optimizer state to resume from"
            )
        for key, have in (
            ("class", type(self).__name__),
            ("kind", self._engine.kind),
            ("dtype", self._engine.dtype),
            ("sizes", self._engine.sizes),
        ):
            if mine.get(key) != have:
                raise ValueError(
                    f"state dict {key} {mine.get(key)!r} does not match this optimizer's "
                    f"{have!r}"
                )
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(groups, self.param_groups)
        ):
            raise ValueError(
                "state dict parameter groups do not match this optimizer's (their number or "
                "their sizes differ)"
            )
        base = getattr(self, "base_optimizer", None)
        old_base = None
        if not self._fused and base is not None and mine.get("base") is not None:
            old_base = base.state_dict()
            base.load_state_dict(mine["base"])
        old_ire = dict(self._ire)
        try:
            self._engine.configure(mine["ire"])
            self._engine.load(mine["engine"])
        except BaseException:
            self._engine.configure(old_ire)
            if old_base is not None:
                base.load_state_dict(old_base)
            raise
        self._ire = dict(mine["ire"])
        # In place, so a base optimizer sharing these group dicts sees the same values.
        for g, s in zip(self.param_groups, groups):
            for k, v in s.items():
                if k != "params":
                    g[k] = v
        self._load_extra_state(mine.get("extra", {}))
