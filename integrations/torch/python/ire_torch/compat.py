"""Drop-in replacements of the official IRE classes (wmz9/IRE-algorithm-framework), with
their constructor signatures, method names and numerics, on the native fused kernels.

``from ire_torch.compat import SGDIRE`` in place of ``from sgdire import SGDIRE`` (likewise
``SAMIRE`` from ``samire.py``, ``AdamWIRE_PARAMS`` from ``NLP/LLM/ire.py`` and ``IRE_PARAMS`` from
``NLP/LLM/ire_new.py``) changes nothing in a training script but its speed: the same calls in
the same order (``update_mask`` after an estimator backward, then ``descent_step`` / ``step``),
the same threshold rule of each class, the mask readable as ``opt.state[p]["mask"]`` (float
in the parameter's dtype, or bool for ``IRE_PARAMS``, as the official classes keep it), and
updates equal to the official ones to rounding (float64, 40 steps of the tests: at most
6e-16 relative, a few units in the last place; masks identical; with a torch base the
parameters come out bit for bit the same).

When the base optimizer is exactly ``torch.optim.SGD`` or ``torch.optim.AdamW`` (no
``amsgrad``, ``maximize``, ``capturable`` or ``differentiable``; momentum, betas and eps the same
in every group), the whole step runs in the fused native kernels and the torch base optimizer
is never stepped (``opt.base_optimizer.state`` stays empty; its groups are shared and still
drive the learning rate). With any other base, torch takes the base step and the native
kernels do the snapshot, the mask and the boost.

Where the numerics differ from the official code, and why that is within rounding:

* The boost. The official code adds ``((Δ * mask) * prog) * lr / base_lr`` evaluated left to
  right in the tensor's dtype; the kernels add ``κ_t Δ`` with ``κ_t = prog * lr / base_lr``
  computed once in float64. Both round the same real product; the results differ by a few
  units in the last place of the increment, not of the parameter.
* The base step. The fused kernels compute torch's SGD and AdamW formulas in the same order
  without fused multiply-adds; torch's vectorized CPU kernels contract some of them into
  FMAs. Again a few ulps of each update.
* Counts. ``int(N * rank)`` is computed as ire-core's ``truncated_count``, which snaps a
  product within 1e-9 (relative) of an integer to that integer (so γ = 1 − rank round-trips);
  the official count differs only when ``N * rank`` is, in exact arithmetic, that close below
  an integer without being one.
* Where the official code fails (``rank`` so small that no coordinate is sharp makes
  ``torch.topk(..)[-1]`` raise; ``max_iter_decay < 10`` divides by zero; a ``None`` gradient
  in ``SGDIRE.update_mask``), these classes either raise a ``ValueError`` saying so or, for
  the empty selection, treat every coordinate as flat (``SGDIRE`` / ``SAMIRE``) or none
  (``IRE_PARAMS``).
* Parameters with ``requires_grad=False`` when the optimizer is created take no part in IRE
  (never ranked or boosted), where the official code ranks their zero estimate.
* ``p.data`` keeps its storage: the official ``descent_step`` rebinds ``p.data`` to new
  tensors each step; here every update is in place (``data_ptr()`` never changes).
* ``state_dict()`` holds the whole state (base moments included, which the official classes
  omit); it loads into the same class only.
* ``NaN`` or infinite gradients raise ``ValueError`` before anything moves.
"""

import torch

from . import _native
from ._engine import EngineOptimizer, fused_base_of

__all__ = ["SGDIRE", "SAMIRE", "AdamWIRE_PARAMS", "IRE_PARAMS"]


def _ire_options(rank, beta, estimator, threshold):
    if not 0.0 <= float(rank) <= 1.0:
        raise ValueError(f"rank must be in [0, 1] (it is 1 - gamma), got {rank}")
    return {
        "kappa": 0.0,
        "gamma": 1.0 - float(rank),
        "refresh_every": 1,
        "warmup_steps": 0,
        "beta": float(beta),
        "estimator": estimator,
        "threshold": threshold,
        "kappa_lr_max": None,
        "rank_increase_horizon": None,
    }


def _kappa(prog, use_ire):
    if not use_ire:
        return 0.0
    prog = float(prog)
    if not prog >= 0.0:
        raise ValueError(f"prog (the boost κ) must be >= 0, got {prog}")
    return prog


def _rank_at(rank, rank_increase, iter_decay, max_iter_decay):
    """The official rank_t: ``rank``, or the ``rank_increase`` schedule at ``iter_decay``."""
    if not rank_increase:
        return float(rank)
    if int(max_iter_decay) != max_iter_decay or int(max_iter_decay) < 10:
        raise ValueError(
            f"rank_increase needs an integer max_iter_decay >= 10, got {max_iter_decay}"
        )
    if int(iter_decay) != iter_decay or iter_decay < 0:
        raise ValueError(f"iter_decay must be an integer >= 0, got {iter_decay}")
    return _native.rank_increase(float(rank), int(iter_decay), int(max_iter_decay))


class _Official(EngineOptimizer):
    """What the four classes share: the official constructor sequence and state reading."""

    _float_mask = True

    def _official_init(self, params, base_optimizer, kwargs):
        defaults = dict(**kwargs)
        torch.optim.Optimizer.__init__(self, params, defaults)
        if isinstance(base_optimizer, torch.optim.Optimizer):
            self.base_optimizer = base_optimizer
        else:
            self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _param_state(self, i, p):
        mask = self._mask(i, p)
        if not self._float_mask:
            return {"mask": mask.bool()}
        return {"mask": mask.to(p.dtype), "fisher": self._estimate(i, p)}

    def _reset(self, name):
        # ire-core's state names the estimate of tensor i `h.i` and its mask `mask.i`.
        state = self._engine.save()
        for entry in state["entries"]:
            if entry[0].startswith(name + "."):
                entry[1].zero_()
        self._engine.load(state)

    def init_fisher(self):
        """Sets every estimate to zero (as the constructor leaves it)."""
        self._reset("h")

    def init_mask(self):
        """Sets every mask to zero: nothing is boosted until the next ``update_mask``."""
        self._reset("mask")

    def init_last_step_data(self):
        """Nothing to do: θ before the base step is taken inside each step (the official
        class keeps it in ``state[p]['last_step_data']``)."""

    def _descend(self, kappa):
        self._configure(kappa=kappa)
        if self._fused:
            self._fused_step(0.0)
        else:
            self._external_step(0.0, self.base_optimizer.step)
        self._zero_both()

    def _zero_both(self):
        # As the official: both optimizers' gradients (the same tensors when the groups are
        # shared, as the official constructor shares them: then once is enough).
        self.zero_grad()
        if self.base_optimizer.param_groups is not self.param_groups:
            self.base_optimizer.zero_grad()


class SGDIRE(_Official):
    """IRE around a base optimizer class, as ``CV/cifar/sgdire.py``.

    ``SGDIRE(params, base_optimizer, rank, beta, **kwargs)``: ``base_optimizer`` is a torch
    optimizer class built with ``**kwargs`` over the same groups; ``rank`` is the sharp
    fraction (γ = 1 − rank flat); ``beta`` the EMA factor of the squared estimator gradient.
    ``update_mask()`` after an estimator backward; ``descent_step(prog, use_ire)`` after the
    training backward (boost κ = ``prog``; zeroes the gradients). Threshold: the ⌊rank·N⌋-th
    largest estimate over all parameters; flat iff at most it.
    """

    def __init__(self, params, base_optimizer, rank, beta, **kwargs):
        self._official_init(params, base_optimizer, kwargs)
        self.rank = rank
        self.beta = beta
        kind, options = fused_base_of(self.base_optimizer)
        self._setup(
            base_kind=kind,
            base_options=options,
            ire=_ire_options(rank, beta, "squared_gradient", "sharp_top_k"),
            cadence="on_call",
            check_finite=True,
        )

    @torch.no_grad()
    def update_mask(self, **kwargs):
        """Refreshes the estimate (EMA of ``p.grad**2``) and the mask from every parameter's
        ``.grad`` (the estimator gradient)."""
        self._configure(beta=float(self.beta))
        self._refresh(gamma=1.0 - float(self.rank))

    def descent_step(self, prog, use_ire):
        """The base step from ``.grad``, its displacement boosted by ``prog`` along the flat
        coordinates when ``use_ire``; then the gradients are zeroed."""
        self._descend(_kappa(prog, use_ire))


class SAMIRE(_Official):
    """SAM-IRE, as ``CV/cifar/samire.py``.

    ``SAMIRE(params, base_optimizer, rank, beta, rho, adaptive=False, **kwargs)``:
    ``update_mask()`` at θ after an estimator backward; ``ascent_step()`` after the training
    backward (θ → θ + ε, ε = ρ g / (‖g‖ + 1e-12), or ASAM's); ``descent_step(prog, use_ire)``
    after the backward at θ + ε (restores θ, base step, boost). Every parameter needs a
    gradient at both steps.
    """

    def __init__(self, params, base_optimizer, rank, beta, rho, adaptive=False, **kwargs):
        if not rho >= 0.0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self._official_init(params, base_optimizer, kwargs)
        self.rank = rank
        self.beta = beta
        self.rho = rho
        self.adaptive = adaptive
        kind, options = fused_base_of(self.base_optimizer)
        self._setup(
            base_kind=kind,
            base_options=options,
            ire=_ire_options(rank, beta, "squared_gradient", "sharp_top_k"),
            sam={"rho": float(rho), "adaptive": bool(adaptive)},
            cadence="on_call",
            check_finite=True,
        )

    @torch.no_grad()
    def update_mask(self, **kwargs):
        """As ``SGDIRE.update_mask``."""
        self._configure(beta=float(self.beta))
        self._refresh(gamma=1.0 - float(self.rank))

    def ascent_step(self):
        """Moves θ to θ + ε from ``.grad`` (saving θ), then zeroes the gradients."""
        params = self._current_params()
        self._engine.sam_perturb(params, [p.grad for p in params], self._check_finite)
        torch.autograd.graph.increment_version(params)
        self._zero_both()

    def descent_step(self, prog, use_ire):
        """Restores θ, takes the base step with the gradient at θ + ε, boosts it."""
        kappa = _kappa(prog, use_ire)
        if not self._fused:
            params = self._current_params()
            self._engine.sam_restore(params)
        self._descend(kappa)


class AdamWIRE_PARAMS(_Official):  # noqa: N801 (the official name)
    """AdmIRE, as ``NLP/LLM/ire.py``.

    ``AdamWIRE_PARAMS(params, base_optimizer, rank, rank_increase, prog, prog_decay, beta,
    **kwargs)``: ``update_mask(iter_decay, max_iter_decay, track_name_file=None)`` after an
    estimator backward (rank_t from ``rank_increase``; the sharp top-k rule when rank_t < 0.5,
    else the flat k-th smallest); ``descent_step(lr, base_lr, use_ire=True)`` after the training
    backward (κ_t = prog · lr / base_lr with ``prog_decay``; zeroes the gradients).
    """

    def __init__(
        self, params, base_optimizer, rank, rank_increase, prog, prog_decay, beta, **kwargs
    ):
        self._official_init(params, base_optimizer, kwargs)
        self.rank = rank
        self.rank_increase = rank_increase
        self.prog = prog
        self.prog_decay = prog_decay
        self.beta = beta
        kind, options = fused_base_of(self.base_optimizer)
        self._setup(
            base_kind=kind,
            base_options=options,
            ire=_ire_options(rank, beta, "squared_gradient", "admire"),
            cadence="on_call",
            check_finite=True,
        )

    def init_id_map(self, named_parameters):
        """Names for ``update_mask``'s ``track_name_file``."""
        self.id_map = {id(p): name for name, p in named_parameters}

    @torch.no_grad()
    def update_mask(self, iter_decay, max_iter_decay, track_name_file=None, **kwargs):
        """Refreshes the estimate and mask from ``.grad``; with ``track_name_file``, writes
        each parameter's flat fraction as the official class does."""
        rank_t = _rank_at(self.rank, self.rank_increase, iter_decay, max_iter_decay)
        self._configure(beta=float(self.beta))
        self._refresh(gamma=1.0 - rank_t)
        if track_name_file is not None:
            names = getattr(self, "id_map", {})
            ratios = {}
            for i, p in enumerate(self._params):
                name = names.get(id(p)) or str(id(p))
                # As the official: an integer count divided in torch's default float dtype.
                ratios[name] = (torch.tensor(self._engine.flat_count(i)) / p.numel()).item()
            track_name_file.write(f"{ratios}")
            track_name_file.flush()

    def descent_step(self, lr, base_lr, use_ire=True):
        """``set_descent(lr, base_lr, use_ire)`` then ``step()``."""
        self.set_descent(lr, base_lr, use_ire)
        self.step()

    def step(self, closure=None):
        """The base step, boosted by κ_t along the flat coordinates when ``use_ire`` (the
        values of the last ``set_descent``); zeroes the gradients."""
        if not hasattr(self, "use_ire"):
            raise RuntimeError(
                "AdamWIRE_PARAMS.step: call set_descent(lr, base_lr, use_ire) first (or use "
                "descent_step)"
            )
        if self.prog_decay and self.use_ire:
            base_lr = float(self.base_lr)
            if not base_lr > 0.0:
                raise ValueError(f"base_lr must be > 0 with prog_decay, got {base_lr}")
            self._configure(kappa_lr_max=base_lr)
            kappa_lr = float(self.lr)
        else:
            self._configure(kappa_lr_max=None)
            kappa_lr = 0.0
        self._configure(kappa=_kappa(self.prog, self.use_ire))
        if self._fused:
            self._fused_step(kappa_lr)
        else:
            self._external_step(kappa_lr, self.base_optimizer.step)
        self._zero_both()

    def set_descent(self, lr, base_lr, use_ire=True):
        """The learning rate, the peak learning rate and the IRE switch of the next steps."""
        self.lr = lr
        self.base_lr = base_lr
        self.use_ire = use_ire

    def _extra_state(self):
        return {k: getattr(self, k) for k in ("lr", "base_lr", "use_ire") if hasattr(self, k)}


class IRE_PARAMS(_Official):  # noqa: N801 (the official name)
    """IRE around a base optimizer instance, as ``NLP/LLM/ire_new.py``.

    ``IRE_PARAMS(params, base_optimizer, rank, rank_increase, prog, **kwargs)``:
    ``base_optimizer`` is an optimizer instance whose groups are shared;
    ``update_mask(iter_decay, max_iter_decay)`` after an estimator backward replaces each
    ``.grad`` by its absolute value in place (as the official) and marks flat the coordinates at
    or below the ⌊(1 − rank_t)·N⌋-th smallest; ``step(closure=None)`` (or
    ``descent_step(use_ire=True)``) takes the base step and, when ``use_ire``, boosts it by
    ``prog``. Gradients are not zeroed by the step; ``zero_grad`` zeroes both optimizers'.
    """

    _float_mask = False

    def __init__(self, params, base_optimizer, rank, rank_increase, prog, **kwargs):
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError("IRE_PARAMS takes a torch optimizer instance as base_optimizer")
        self._official_init(params, base_optimizer, kwargs)
        self.rank = rank
        self.rank_increase = rank_increase
        self.prog = prog
        self.use_ire = False
        kind, options = fused_base_of(self.base_optimizer)
        self._setup(
            base_kind=kind,
            base_options=options,
            ire=_ire_options(rank, 0.0, "abs_gradient", "flat_kth_smallest"),
            cadence="on_call",
            check_finite=True,
        )

    @torch.no_grad()
    def update_mask(self, iter_decay, max_iter_decay, **kwargs):
        """``|.grad|`` in place, then the mask from it."""
        rank_t = _rank_at(self.rank, self.rank_increase, iter_decay, max_iter_decay)
        params = self._current_params()
        for i, (p, part) in enumerate(zip(params, self._takes_part)):
            if part and p.grad is None:
                raise ValueError(
                    f"IRE_PARAMS.update_mask: parameter {i} has no .grad (run the estimator "
                    "backward first)"
                )
        for p, part in zip(params, self._takes_part):
            if part:
                p.grad.abs_()
        self._refresh(gamma=1.0 - rank_t)

    def descent_step(self, use_ire=True):
        """``set_descent(use_ire)`` then ``step()``."""
        self.set_descent(use_ire)
        self.step()

    def step(self, closure=None):
        """The base step (``closure`` passed to it), boosted by ``prog`` when ``use_ire``."""
        self._configure(kappa=_kappa(self.prog, self.use_ire))
        if self._fused:
            if closure is not None:
                with torch.enable_grad():
                    closure()
            self._fused_step(0.0)
        else:
            self._external_step(0.0, lambda: self.base_optimizer.step(closure))

    def set_descent(self, use_ire=True):
        """The IRE switch of the next steps."""
        self.use_ire = use_ire

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the gradients of both optimizers."""
        super().zero_grad(set_to_none)
        self.base_optimizer.zero_grad(set_to_none)

    def _extra_state(self):
        return {"use_ire": self.use_ire}
