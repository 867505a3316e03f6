"""Times one optimizer step on the CPU, in one run: ire_torch's AdmIRE (the modern IRE class
and the drop-in AdamWIRE_PARAMS), the official AdamWIRE_PARAMS update (re-implemented in
PyTorch in tests/official_reference.py: the official code is not installable), and torch's
fused AdamW, on one flat float32 parameter of each size. Also times a mask refresh of each
IRE implementation and gives the cost per step with one refresh every 10 steps.

Run through scripts/torch-bench.sh (which builds the package first); writes a markdown report.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import ire_torch  # noqa: E402
from ire_torch.compat import AdamWIRE_PARAMS  # noqa: E402
from official_reference import OfficialIRE  # noqa: E402

LR, WD, BETAS, EPS = 1e-3, 0.1, (0.9, 0.95), 1e-8
RANK, PROG, BETA = 0.4, 2.0, 0.0  # γ = 0.6: the sharp top-k branch of AdmIRE's switch
REFRESH_EVERY = 10
# The modern class refreshes on its own schedule; the timed steps must not include refreshes
# (they are timed apart), so its schedule is set past the end of the run.
NEVER = 10**12


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


class Side:
    """One implementation at one size: its step and its refresh as zero-argument callables."""

    def __init__(self, name, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.name = name
        self.p = torch.nn.Parameter(torch.randn(n, generator=g))
        self.grad = torch.randn(n, generator=g) * 1e-2
        self.est = torch.randn(n, generator=g) * 1e-2
        self.p.grad = self.grad
        self.step = None
        self.refresh = None


def make_sides(n, check_finite_off):
    sides = []

    s = Side("ire_torch.IRE(base='adamw'), AdmIRE", n)
    opt = ire_torch.IRE([s.p], base="adamw", lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                        kappa=PROG, gamma=1 - RANK, threshold="admire",
                        refresh_every=NEVER, beta=BETA, kappa_decay=True)

    def ire_refresh(s=s, opt=opt):
        s.p.grad = s.est
        opt.refresh()
        s.p.grad = s.grad

    def ire_step(s=s, opt=opt):
        if opt.refresh_due():
            ire_refresh()
        opt.step()

    s.step, s.refresh = ire_step, ire_refresh
    sides.append(s)

    if check_finite_off:
        s = Side("ire_torch.IRE, check_finite=False", n)
        opt2 = ire_torch.IRE([s.p], base="adamw", lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                             kappa=PROG, gamma=1 - RANK, threshold="admire",
                             refresh_every=NEVER, beta=BETA, kappa_decay=True,
                             check_finite=False)

        def ire2_refresh(s=s, opt=opt2):
            s.p.grad = s.est
            opt.refresh()
            s.p.grad = s.grad

        def ire2_step(s=s, opt=opt2):
            if opt.refresh_due():
                ire2_refresh()
            opt.step()

        s.step, s.refresh = ire2_step, ire2_refresh
        sides.append(s)

    s = Side("ire_torch.compat.AdamWIRE_PARAMS", n)
    compat = AdamWIRE_PARAMS([s.p], torch.optim.AdamW, rank=RANK, rank_increase=False,
                             prog=PROG, prog_decay=True, beta=BETA, lr=LR, betas=BETAS,
                             eps=EPS, weight_decay=WD)

    def compat_refresh(s=s, opt=compat):
        s.p.grad = s.est
        opt.update_mask(0, 1000)

    def compat_step(s=s, opt=compat):
        s.p.grad = s.grad  # the step zeroes the gradients, as the official one
        opt.descent_step(LR, LR, True)

    s.step, s.refresh = compat_step, compat_refresh
    sides.append(s)

    s = Side("official AdamWIRE_PARAMS (PyTorch re-implementation)", n)
    official = OfficialIRE([s.p], torch.optim.AdamW([s.p], lr=LR, betas=BETAS, eps=EPS,
                                                    weight_decay=WD),
                           beta=BETA, rule="admire", boost="decay")

    def official_refresh(s=s, opt=official):
        s.p.grad = s.est
        opt.update_mask(RANK)

    def official_step(s=s, opt=official):
        s.p.grad = s.grad
        opt.descent(PROG, True, lr=LR, base_lr=LR)

    s.step, s.refresh = official_step, official_refresh
    sides.append(s)

    s = Side("torch.optim.AdamW(fused=True), no IRE", n)
    fused = torch.optim.AdamW([s.p], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, fused=True)
    s.step = fused.step
    sides.append(s)
    return sides


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="markdown report to write")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    sizes = [int(x) for x in args.sizes.split(",")]
    start = time.time()
    rows = {}  # (size, name) -> {"step": [..], "refresh": [..]}
    for n in sizes:
        iters, warm = (100, 10) if n <= 2_000_000 else (30, 5)
        sides = make_sides(n, check_finite_off=True)
        # Each side's state exists before timing (first step, first refresh).
        for s in sides:
            if s.refresh:
                s.refresh()
            s.step()
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                rec = rows.setdefault((n, s.name), {"step": [], "refresh": []})
                rec["step"].append(timed(s.step, warm, iters))
                if s.refresh is not None:
                    rec["refresh"].append(timed(s.refresh, 1, max(3, iters // 10)))
        del sides
    elapsed = time.time() - start
    report = render(rows, sizes, args, elapsed)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def render(rows, sizes, args, elapsed):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out = []
    out.append("# ire_torch step benchmark: AdmIRE vs the official class vs fused AdamW (CPU)\n")
    out.append(
        f"Generated by `bash scripts/torch-bench.sh` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, every number "
        f"below from that one run ({args.rounds} rounds, sides in reverse order in even rounds; "
        f"each figure is the lowest of the per-round medians). Machine: {cpu}, "
        f"{os.cpu_count()} cores, {args.threads} threads on each side (torch.set_num_threads; "
        f"rayon's pool); Linux {platform.release()}; torch {torch.__version__} "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}); ire_torch "
        f"{ire_torch.__version__} (release build); wall time {elapsed:.0f} s. Load average "
        f"after the run: {' '.join(open('/proc/loadavg').read().split()[:3])}.\n"
    )
    out.append(
        "One flat float32 parameter of each size; AdamW lr 1e-3, betas (0.9, 0.95), eps 1e-8, "
        "weight decay 0.1; IRE κ 2 decaying with the lr (`prog_decay`), γ 0.6 (official "
        "`rank` 0.4: AdmIRE's top-k branch), β 0, one refresh every 10 steps. *Step*: one "
        "optimizer step without a refresh (median of timed steps). *Refresh*: one mask "
        "refresh from an estimator gradient. *Per step, K=10*: step + refresh / 10. Ratios "
        "are against torch's fused AdamW step (no IRE at all) and against the official "
        "class's per-step cost.\n"
    )
    out.append("| size | implementation | step (ms) | refresh (ms) | per step, K=10 (ms) | "
               "step / fused AdamW | per step: official / this |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        names = [name for (m, name) in rows if m == n]
        best = {name: (min(rows[(n, name)]["step"]),
                       min(rows[(n, name)]["refresh"]) if rows[(n, name)]["refresh"] else None)
                for name in names}
        fused_name = next(x for x in names if x.startswith("torch.optim.AdamW"))
        official_name = next(x for x in names if x.startswith("official"))
        fused_step = best[fused_name][0]
        off_step, off_refresh = best[official_name]
        off_per = off_step + off_refresh / REFRESH_EVERY
        for name in names:
            step, refresh = best[name]
            per = step + (refresh / REFRESH_EVERY if refresh is not None else 0.0)
            out.append(
                f"| {n / 1e6:g}M | {name} | {step:.3f} | "
                f"{'-' if refresh is None else f'{refresh:.3f}'} | "
                f"{per:.3f} | {step / fused_step:.2f} | "
                f"{'-' if refresh is None else f'{off_per / per:.1f}×'} |"
            )
    out.append("")
    out.append("Every per-round median (ms), step / refresh:\n")
    out.append("| size | implementation | " + " | ".join(
        f"round {r + 1}" for r in range(args.rounds)) + " |")
    out.append("| --- | --- | " + " | ".join("---" for _ in range(args.rounds)) + " |")
    for (n, name), rec in rows.items():
        cells = []
        for r in range(args.rounds):
            cell = f"{rec['step'][r]:.3f}"
            if rec["refresh"]:
                cell += f" / {rec['refresh'][r]:.3f}"
            cells.append(cell)
        out.append(f"| {n / 1e6:g}M | {name} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
