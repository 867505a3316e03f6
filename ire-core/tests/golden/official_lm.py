"""Golden trajectories of the official language-model IRE optimizers, from a reading of their
update rules written here in plain PyTorch (float64), for `ire-core/tests/official_lm.rs`.

- `AdamWIRE_PARAMS` (NLP/LLM/ire.py of the official repository): an EMA of the squared
  estimator gradient, the threshold by AdmIRE's switch (rank < 0.5: the `rank·N`-th largest;
  else the `(1 − rank)·N`-th smallest), mask `h <= tau`, a torch AdamW base step, and the boost
  `p + Δ·mask·prog·lr/base_lr` (prog_decay); optionally the periodic `rank_increase` schedule.
- `IRE_PARAMS` (NLP/LLM/ire_new.py): `|g|` of the estimator gradient (no EMA), the
  `(1 − rank)·N`-th smallest by `kthvalue`, mask `|g| <= tau`, a torch AdamW base step, and the
  boost `p + Δ·mask·prog`.

Regenerate (torch in any environment):  python ire-core/tests/golden/official_lm.py
It writes ire-core/tests/golden/official_lm.json next to itself: the inputs (initial
parameters, training and estimator gradients of every step, learning rates) and, for each case,
the parameters after every step and the masks after every refresh.
"""

import json
import math
import os

import torch

torch.set_default_dtype(torch.float64)

SIZES = [23, 14]  # two tensors: one global threshold over both
STEPS = 24
REFRESH_EVERY = 4


def series(kind, t, n, offset):
    """Deterministic gradient values (stored in the JSON: the Rust test reads them back)."""
    return [
        math.sin(0.37 * (i + offset) + 1.3 * t + (0.5 if kind == "est" else 0.0))
        * (1.0 + 0.1 * ((i + offset) % 5))
        for i in range(n)
    ]


def inputs():
    theta0 = []
    off = 0
    for n in SIZES:
        theta0.append([math.cos(0.11 * (i + off)) for i in range(n)])
        off += n
    grads, ests, lrs = [], [], []
    for t in range(STEPS):
        g, e, off = [], [], 0
        for n in SIZES:
            g.append(series("train", t, n, off))
            e.append(series("est", t, n, off))
            off += n
        grads.append(g)
        ests.append(e)
        # A cosine learning rate from 1e-2 to 1e-3.
        lrs.append(1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * t / STEPS)))
    return theta0, grads, ests, lrs


def rank_at(rank, rank_increase, it, horizon):
    """The official rank_increase formula, as written."""
    if not rank_increase:
        return rank
    iter_mod = it % int(horizon / 10)
    if iter_mod < horizon / 20:
        return rank + (0.1 - rank) * it / (horizon / 20)
    return 0.1 + (rank - 0.1) * (it - horizon / 20) / (horizon / 20)


def run(case, theta0, grads, ests, lrs):
    params = [torch.tensor(v, requires_grad=False) for v in theta0]
    base = torch.optim.AdamW(
        params, lr=lrs[0], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
    )
    fisher = [torch.zeros_like(p) for p in params]
    mask = [torch.zeros_like(p) for p in params]
    out_params, out_masks = [], []
    base_lr = max(lrs)
    for t in range(STEPS):
        if t % REFRESH_EVERY == 0:
            est = [torch.tensor(e) for e in ests[t]]
            if case["kind"] == "admire":
                beta = case["beta"]
                fisher = [beta * f + (1 - beta) * torch.square(g) for f, g in zip(fisher, est)]
                values = torch.cat([f.flatten() for f in fisher])
                r = rank_at(case["rank"], case["rank_increase"], t, case["horizon"])
                if r < 0.5:
                    keep = int(len(values) * r)
                    v, _ = torch.topk(values, keep, largest=True)
                else:
                    keep = int(len(values) * (1 - r))
                    v, _ = torch.topk(values, keep, largest=False)
                tau = v[-1]
                mask = [(f <= tau).to(torch.float64) for f in fisher]
            else:  # ire_new: |g| in place of g, kthvalue of the (1 - rank)·N-th smallest
                absg = [g.abs() for g in est]
                values = torch.cat([a.view(-1) for a in absg])
                keep = int(len(values) * (1 - case["rank"]))
                tau, _ = torch.kthvalue(values, keep)
                mask = [(a <= tau).to(torch.float64) for a in absg]
            out_masks.append([[int(x) for x in m.tolist()] for m in mask])
        for group in base.param_groups:
            group["lr"] = lrs[t]
        for p, g in zip(params, grads[t]):
            p.grad = torch.tensor(g)
        last = [p.clone() for p in params]
        base.step()
        with torch.no_grad():
            for p, old, m in zip(params, last, mask):
                d = p - old
                if case["kind"] == "admire":
                    p.copy_(p + d * m * case["prog"] * lrs[t] / base_lr)
                else:
                    d[m == 0] = 0.0
                    p.copy_(p + d * case["prog"])
        out_params.append([p.tolist() for p in params])
    return {"params": out_params, "masks": out_masks, "lr_max": base_lr}


CASES = [
    # AdmIRE's switch on its flat side (rank >= 0.5, i.e. gamma <= 0.5), EMA beta 0.7.
    {"name": "adamw_ire_params_flat", "kind": "admire", "rank": 0.6, "beta": 0.7,
     "prog": 3.0, "rank_increase": False, "horizon": 0},
    # ... and on its sharp side (rank < 0.5).
    {"name": "adamw_ire_params_sharp", "kind": "admire", "rank": 0.3, "beta": 0.0,
     "prog": 2.0, "rank_increase": False, "horizon": 0},
    # The periodic rank_increase schedule (horizon 400: over the refreshes of this run, at
    # steps 0-20, rank moves from 0.6 down to 0.2, then 0.1: AdmIRE's switch crosses 0.5).
    {"name": "adamw_ire_params_rank_increase", "kind": "admire", "rank": 0.6, "beta": 0.0,
     "prog": 2.0, "rank_increase": True, "horizon": 400},
    # IRE_PARAMS (ire_new.py): |g|, kthvalue, constant prog.
    {"name": "ire_params", "kind": "ire_new", "rank": 0.4, "beta": 0.0, "prog": 4.0,
     "rank_increase": False, "horizon": 0},
]


def main():
    theta0, grads, ests, lrs = inputs()
    data = {
        "sizes": SIZES,
        "steps": STEPS,
        "refresh_every": REFRESH_EVERY,
        "adamw": {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1},
        "theta0": theta0,
        "grads": grads,
        "ests": ests,
        "lrs": lrs,
        "cases": [dict(case, **run(case, theta0, grads, ests, lrs)) for case in CASES],
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_lm.json")
    with open(path, "w") as f:
        json.dump(data, f)
    print("wrote", path)


if __name__ == "__main__":
    main()
