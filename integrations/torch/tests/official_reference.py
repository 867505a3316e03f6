"""A pure-PyTorch re-implementation of what the official IRE classes compute
(wmz9/IRE-algorithm-framework: ``CV/cifar/sgdire.py``, ``samire.py``, ``NLP/LLM/ire.py``,
``NLP/LLM/ire_new.py``), written from their description to serve as the oracle of the tests
and the baseline of the benchmark. Same tensor operations in the same order:

* refresh: ``h <- beta*h + (1-beta)*g**2`` (or ``|g|`` for ``IRE_PARAMS``), one threshold over
  every parameter's estimate concatenated; the sharp rule takes the ``int(N*rank_t)``-th
  largest (``torch.topk``), the flat rule the ``int(N*(1-rank_t))``-th smallest
  (``torch.kthvalue`` / ``topk(largest=False)``), AdmIRE switches on ``rank_t < 0.5``; a
  coordinate is flat iff its estimate is at most the threshold;
* step: clone θ, the torch base optimizer's step, ``Δ = θ - θ_old``, and the boost written as
  each class writes it (``θ + Δ*mask*prog``, ``θ + Δ*mask*prog*lr/base_lr``, or zeroing Δ off
  the mask then ``θ + Δ*prog``), rebinding ``p.data``;
* SAM: ``ε = ρ g / (‖(‖g_i‖)_i‖ + 1e-12)`` (ASAM: ``θ² g`` over ``‖(‖|θ_i| g_i‖)_i‖``),
  θ restored from the saved copy before the base step.
"""

import torch


def rank_increase(rank, iter_decay, max_iter_decay):
    """The official ``rank_increase`` schedule, as written."""
    if iter_decay % int(max_iter_decay / 10) < max_iter_decay / 20:
        return rank + (0.1 - rank) * iter_decay / (max_iter_decay / 20)
    return 0.1 + (rank - 0.1) * (iter_decay - max_iter_decay / 20) / (max_iter_decay / 20)


class OfficialIRE:
    """The official update around a torch base optimizer instance over ``params``.

    ``rule``: ``"sharp"`` (SGDIRE, SAMIRE), ``"flat"`` (IRE_PARAMS) or ``"admire"``
    (AdamWIRE_PARAMS). ``estimator``: ``"square"`` (EMA of g²) or ``"abs"`` (|g|, no EMA).
    ``boost``: ``"mask"`` (θ + Δ·mask·κ), ``"decay"`` (θ + Δ·mask·prog·lr/base_lr) or
    ``"select"`` (Δ zeroed off the mask, θ + Δ·prog). ``ranked``: the parameters that take
    part in IRE (default all; the others are stepped by the base only).
    """

    def __init__(self, params, base, *, beta=0.0, rule="sharp", estimator="square",
                 boost="mask", mask_dtype=None, rho=None, adaptive=False, ranked=None):
        self.all_params = list(params)
        self.params = self.all_params if ranked is None else list(ranked)
        self.base = base
        self.beta = beta
        self.rule = rule
        self.estimator = estimator
        self.boost = boost
        self.rho = rho
        self.adaptive = adaptive
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.mask = [torch.zeros_like(p, dtype=mask_dtype or p.dtype) for p in self.params]
        self.old_p = None

    @torch.no_grad()
    def update_mask(self, rank_t):
        """From the estimator gradients in ``.grad``."""
        if self.estimator == "square":
            self.fisher = [
                self.beta * h + (1 - self.beta) * torch.square(p.grad)
                for h, p in zip(self.fisher, self.params)
            ]
        else:
            self.fisher = [p.grad.abs() for p in self.params]
        flat = torch.cat([h.flatten() for h in self.fisher])
        n = len(flat)
        sharp = self.rule == "sharp" or (self.rule == "admire" and rank_t < 0.5)
        if sharp:
            tau = torch.topk(flat, int(n * rank_t), largest=True).values[-1]
        elif self.rule == "admire":
            tau = torch.topk(flat, int(n * (1 - rank_t)), largest=False).values[-1]
        else:
            tau = torch.kthvalue(flat, int(n * (1 - rank_t))).values
        self.mask = [(h <= tau).to(m.dtype) for h, m in zip(self.fisher, self.mask)]

    @torch.no_grad()
    def ascent(self):
        """SAM's perturbation from ``.grad``."""
        params = self.all_params
        norms = [((p.abs() if self.adaptive else 1.0) * p.grad).norm(p=2) for p in params]
        scale = self.rho / (torch.norm(torch.stack(norms), p=2) + 1e-12)
        self.old_p = []
        for p in params:
            self.old_p.append(p.data.clone())
            p.add_((torch.pow(p, 2) if self.adaptive else 1.0) * p.grad * scale.to(p))

    @torch.no_grad()
    def descent(self, prog, use_ire, lr=None, base_lr=None):
        """The base step from ``.grad`` (after restoring θ when SAM perturbed it), boosted."""
        if self.old_p is not None:
            for p, old in zip(self.all_params, self.old_p):
                p.data = old
            self.old_p = None
        last = [p.data.clone() for p in self.params]
        self.base.step()
        self.base.zero_grad()
        if not use_ire:
            return
        for p, m, old in zip(self.params, self.mask, last):
            g = p.data - old
            if self.boost == "mask":
                p.data = p.data + g * m * prog
            elif self.boost == "decay":
                p.data = p.data + g * m * prog * lr / base_lr
            else:
                g[~m] = 0.0
                p.data = p.data + g * prog
