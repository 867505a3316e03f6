#!/usr/bin/env python3
"""Joins the JSON files of the peer benchmark (ire-bench's `peer` binary and
torch_bench.py, one file per side, part and round, named SIDE-PART-ROUND.json; the OpenCL
rows from ire-bench's `train_steps` binary) into one markdown report: the performance goals
with whether each was met, every row of ours/PyTorch, the scaling tables and the peak
resident memory of each side.

Each side's time for a row is the lowest of its per-round medians: on a shared machine
other jobs only ever add time, so the least-disturbed round is the best estimate of each
side's own speed. Every per-round median and the per-round ratios follow in a second table.
"""

import argparse
import datetime
import json
import os
import platform
import re

# (what, our benchmark, PyTorch benchmark, target ratio or None, note)
OPT_ROWS = [
    ("AdamW step vs AdamW foreach", "adamw", "adamw_foreach", None,
     "ours `adamw_step` vs `torch.optim.AdamW(foreach=True)`"),
    ("AdamW step vs AdamW fused", "adamw", "adamw_fused", None,
     "ours `adamw_step` vs `torch.optim.AdamW(fused=True)`"),
    ("SGD-momentum step vs SGD foreach", "sgd_momentum", "sgd_momentum_foreach", None,
     "ours `sgd_momentum_step` vs `torch.optim.SGD(momentum=0.9, foreach=True)`"),
    ("AdmIRE step vs fused AdamW", "admire", "adamw_fused", 1.0,
     "ours fused `adamw_ire_step` (AdamW + IRE boost) vs PyTorch's fused AdamW step alone"),
    ("AdmIRE step vs official AdmIRE port", "admire", "admire_official", None,
     "ours fused `adamw_ire_step` vs the official IRE step ported to PyTorch "
     "(clone θ, fused AdamW step, θ += (Δ·mask)·κ)"),
    ("mask refresh vs official top-k refresh", "mask_refresh", "mask_refresh_official", 0.2,
     "ours `ema_square` + global `kth_largest` + `mask_le` vs the official refresh ported to "
     "PyTorch (EMA of ĝ², `torch.topk` threshold, mask)"),
    ("mask refresh vs official kthvalue refresh", "mask_refresh", "mask_refresh_kthvalue", None,
     "ours as above vs the official faster refresh of the Llama runs ported to PyTorch "
     "(`|ĝ|` in place, no EMA, `torch.kthvalue` threshold, boolean mask)"),
]
TRAIN_TARGET = 1.5


def load(paths):
    """[(round, doc)] in round order; the round is the number ending the file name."""
    docs = []
    for p in paths:
        m = re.search(r"-(\d+)\.json$", p)
        with open(p) as f:
            doc = json.load(f)
        doc["_file"] = os.path.basename(p)
        docs.append((int(m.group(1)) if m else 1, doc))
    return sorted(docs, key=lambda x: x[0])


def matches(r, what, size, context):
    return (r["what"] == what and (size is None or r["size"] == size)
            and (context is None or r.get("context", 0) == context))


def per_round(docs, what, size=None, context=None):
    """({round: median ms}, an entry) of `what`; ({}, entry) when unsupported; None if absent."""
    rounds, entry = {}, None
    for rnd, d in docs:
        for r in d["results"]:
            if matches(r, what, size, context):
                entry = r
                if not r.get("unsupported"):
                    rounds[rnd] = r["median_ms"]
    return None if entry is None else (rounds, entry)


def peak_rss(docs, what, size, context):
    """(peak, peak above the baseline) resident memory in bytes, each the lowest over the
    rounds, of the process that ran `what` alone (a file holding one training row); the
    baseline is what the process held before building anything (the program, and for
    PyTorch the torch library). (None, None) if unknown."""
    peaks, above = [], []
    for _, d in docs:
        rs = d["results"]
        if len(rs) == 1 and matches(rs[0], what, size, context) and d.get("peak_rss_bytes"):
            peaks.append(d["peak_rss_bytes"])
            if d.get("baseline_rss_bytes") is not None:
                above.append(d["peak_rss_bytes"] - d["baseline_rss_bytes"])
    return (min(peaks) if peaks else None, min(above) if above else None)


def first(docs, what):
    for _, d in docs:
        for r in d["results"]:
            if r["what"] == what:
                return r
    return None


def label(n):
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return str(n)


def fmt_ms(x):
    if x is None:
        return "unsupported"
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def best(rounds):
    return min(rounds.values()) if rounds else None


def verdict(value, goal, above=False):
    if value is None:
        return "n/a"
    ok = value >= goal if above else value <= goal
    return "yes" if ok else "**no**"


def train_label(entry):
    model = entry["what"][len("train_"):]
    ctx = entry.get("context", 0)
    return f"`{model}`" + (f", context {ctx}" if ctx else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ire", nargs="+", required=True, help="JSON files of the Rust side")
    ap.add_argument("--torch", nargs="+", required=True, help="JSON files of the PyTorch side")
    ap.add_argument("--opencl", default="", help="JSON of the train_steps binary (cpu,opencl)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="bash scripts/peer-bench.sh")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--loads", default="", help="file of `round part side load1 load5 load15`")
    ap.add_argument("--rustc", default="")
    ap.add_argument("--elapsed", type=int, default=0, help="seconds the run took so far")
    args = ap.parse_args()
    ire, torch_docs = load(args.ire), load(args.torch)
    ocl = None
    if args.opencl and os.path.exists(args.opencl):
        with open(args.opencl) as f:
            ocl = json.load(f)

    # ---- the optimizer-step and training-step rows, ours against PyTorch ----
    rows = []  # (what, size, ours rounds, torch rounds, target, note)
    sizes = sorted({r["size"] for _, d in ire for r in d["results"]
                    if r["what"] in {o[1] for o in OPT_ROWS}})
    for n in sizes:
        for what, ours_key, theirs_key, target, note in OPT_ROWS:
            a, b = per_round(ire, ours_key, n), per_round(torch_docs, theirs_key, n)
            if a is not None and b is not None:
                rows.append((what, label(n), a[0], b[0], target, note))
    trains = []  # entries (one per model, batch, context)
    for _, d in ire:
        for r in d["results"]:
            key = (r["what"], r["size"], r.get("context", 0))
            if r["what"].startswith("train_") and key not in [
                    (e["what"], e["size"], e.get("context", 0)) for e in trains]:
                trains.append(r)
    memory = []  # (label, ours bytes, torch bytes)
    for e in trains:
        key = (e["what"], e["size"], e.get("context", 0))
        a, b = per_round(ire, *key), per_round(torch_docs, *key)
        if a is None or b is None:
            continue
        note = e["detail"]
        if b[1].get("params") != e.get("params"):
            note += f" (PyTorch network: {b[1].get('params')} parameters)"
        else:
            note += " on both sides"
        rows.append((f"training step {train_label(e)}", f"batch {e['size']}", a[0], b[0],
                     TRAIN_TARGET, note))
        memory.append((f"{train_label(e)}, batch {e['size']}", peak_rss(ire, *key),
                       peak_rss(torch_docs, *key)))

    def ratio_of(what, size, context=None, ours=None, theirs=None):
        a = per_round(ire, ours or what, size, context)
        b = per_round(torch_docs, theirs or what, size, context)
        if a is None or b is None or not a[0] or not b[0]:
            return None, None, None
        return best(a[0]), best(b[0]), best(a[0]) / best(b[0])

    def paired(pairs):
        """The ratio ours/PyTorch of every round in which both sides ran, over `pairs` of
        (our benchmark, theirs, size, context): the two sides of a round ran back to back, so
        a slow spell of the machine falls on both more often than across rounds."""
        out = []
        for ours, theirs, size, ctx in pairs:
            a = per_round(ire, ours, size, ctx)
            b = per_round(torch_docs, theirs, size, ctx)
            if a and b:
                out += [a[0][r] / b[0][r] for r in sorted(a[0]) if r in b[0]]
        return out

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return None if n == 0 else (xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2]))

    def step_goal(row, pairs, goal):
        """A goal row for an optimizer step: the median of the paired per-round ratios (this
        shared machine's bandwidth swings between runs far more than the two steps differ)."""
        rs = paired(pairs)
        a, b, r = ratio_of(pairs[0][0], pairs[0][2], theirs=pairs[0][1])
        m = median(rs)
        goals.append((row, m, f"≤ {goal:g}", verdict(m, goal),
                      f"median of {len(rs)} paired rounds (the optimizer-step part and the "
                      f"scaling table): {', '.join(f'{x:.2f}' for x in rs)}; best rounds "
                      f"{fmt_ms(a)} / {fmt_ms(b)} ms ({r:.2f})" if r else "-"))

    # ---- the goals of the performance work ----
    triad = first(ire, "triad")
    bw = triad["bytes_per_s"] if triad else None
    goals = []  # (row, measured, goal text, met, how)
    ten = 10_000_000
    step_goal("AdamW step, 10M f32, ours / PyTorch fused AdamW",
              [("adamw", "adamw_fused", ten, None), ("scaling_adamw", "scaling_adamw", ten, None)],
              0.95)
    a, b, r = ratio_of("adamw", ten, theirs="adamw_fused")
    if a and bw:
        frac = 28.0 * 10_000_000 / (a / 1e3) / bw
        # STREAM counts 12 bytes per triad element; the store to `a` also reads it first
        # (write-allocate), 16 bytes in all, while AdamW's in-place stores add no such read.
        goals.append(("AdamW step, 10M f32, bandwidth / triad bandwidth", frac, "≥ 0.9",
                      verdict(frac, 0.9, above=True),
                      f"28 bytes per parameter in {fmt_ms(a)} ms against a triad of "
                      f"{bw / 1e9:.1f} GB/s as STREAM counts it (12 bytes per element; "
                      f"{frac * 0.75:.2f} against the 16 bytes the triad really moves)"))
    step_goal("AdmIRE step vs PyTorch fused AdamW, 10M",
              [("admire", "adamw_fused", ten, None),
               ("scaling_admire", "scaling_adamw", ten, None)], 1.0)
    for model, ctx, batch, goal in [("mlp", 0, None, 0.8), ("resnet20", 0, None, 0.8),
                                    ("lm-paper", 128, None, 0.6),
                                    ("lm-paper", 1024, None, 0.8),
                                    ("gpt2-block", 1024, None, None)]:
        a, b, r = ratio_of(f"train_{model}", batch, ctx)
        if r is None:
            continue
        e = per_round(ire, f"train_{model}", batch, ctx)[1]
        goals.append((f"training step {train_label(e)}, batch {e['size']}", r,
                      "-" if goal is None else f"≤ {goal:g}",
                      "-" if goal is None else verdict(r, goal),
                      f"{fmt_ms(a)} / {fmt_ms(b)} ms"))
    for lbl, ma, mb in memory:
        if "`lm-paper`, context 1024" in lbl and ma[1] and mb[1]:
            r = ma[1] / mb[1]
            goals.append((f"peak memory {lbl} (above each process's baseline)", r, "≤ 1",
                          verdict(r, 1.0), f"{ma[1] / 2**30:.2f} / {mb[1] / 2**30:.2f} GiB"))
    over = next((r for _, d in ire for r in d["results"] if r["what"].startswith("overhead_")),
                None)
    if over:
        goals.append(("AdmIRE training step / AdamW training step (K = 10, amortized), ours",
                      over["ratio"], "≤ 1.05", verdict(over["ratio"], 1.05),
                      f"{over['admire_ms']:.1f} / {over['adamw_ms']:.1f} ms, "
                      f"`{over['what'][len('overhead_'):]}` batch {over['size']} context "
                      f"{over['context']}"))
    if ocl:
        for res in ocl["results"]:
            sides = {s["backend"]: s for s in res["sides"]}
            if "cpu" in sides and "opencl" in sides:
                r = sides["opencl"]["best_median_ms"] / sides["cpu"]["best_median_ms"]
                goal = 3.0 if not res.get("context") else 2.0
                what = f"`{res['model']}`" + (
                    f", context {res['context']}" if res.get("context") else "")
                goals.append((f"OpenCL (PoCL) training step / CPU backend, {what}, batch "
                              f"{res['batch']}", r, f"≤ {goal:g}", verdict(r, goal),
                              f"{sides['opencl']['best_median_ms']:.1f} / "
                              f"{sides['cpu']['best_median_ms']:.1f} ms"))

    t0, i0 = torch_docs[0][1], ire[0][1]
    fused = t0.get("fused_adamw_cpu", False)
    # The measurement's date: when the last result file was written.
    last = max(os.path.getmtime(p) for p in [*args.ire, *args.torch])
    now = datetime.datetime.fromtimestamp(last, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
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
    w = out.append
    w("# Peer benchmark: ire against PyTorch on the CPU\n")
    w(f"Generated by `{args.command}` on {now}. Both sides ran in that one invocation, back to "
      f"back: {args.rounds} round(s), each timing the optimizer steps, every training row (each "
      "in a process of its own, so its peak memory is its own), the scaling tables, ours then "
      "PyTorch's, the order of the two sides reversed in even rounds. Each benchmark runs its "
      "warm-up iterations, then times N iterations one by one; a side's time below is the "
      "**lowest of its per-round medians** (other jobs on the machine only add time, so the "
      "least-disturbed round is the best estimate of each side's own speed). Ratios below 1 "
      "mean ours is faster. Every per-round median is listed further down.\n")
    w("**The numbers come from a shared 2-core machine**: other jobs may run beside the "
      "benchmark (load averages below). Under load every time moves, PyTorch's OpenMP threads "
      "much more than rayon's; expect the ratios to move between runs.\n")
    w("## Machine\n")
    w(f"- CPU: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}")
    if bw:
        w(f"- STREAM triad bandwidth of this run: {bw / 1e9:.1f} GB/s (`a = b + s·c` on three "
          "arrays of 10M f32, 12 bytes counted per element, best of 10, rayon's pool)")
    w(f"- Threads: ire {i0.get('threads')} (rayon's global pool, `--threads`), PyTorch "
      f"{t0.get('threads')} (`torch.set_num_threads` set to the core count, `--threads`)")
    w(f"- PyTorch {t0.get('torch_version')} (the PyPI wheel, run on the CPU), CPU capability "
      f"{t0.get('cpu_capability')}; fused AdamW on the CPU: "
      f"{'supported' if fused else 'NOT supported in this version'}")
    w(f"- ire: CPU backend, release build{', ' + args.rustc if args.rustc else ''}; wide SIMD "
      f"(AVX2 / AVX-512) kernels: {'on' if i0.get('wide_simd') else 'off'}")
    if args.elapsed:
        w(f"- Wall time of the command (the virtual environment already installed): "
          f"{args.elapsed} s")
    w("")
    w("## Goals\n")
    w("The performance goals of this project, measured in this run (ratios ours / PyTorch "
      "unless the row says otherwise; the OpenCL rows are PoCL on these same cores against "
      "the native CPU backend, from `train_steps` in the same invocation).\n")
    w("| row | measured | goal | met? | times |")
    w("| --- | --- | --- | --- | --- |")
    for row, val, goal, met, how in goals:
        v = "-" if val is None else f"{val:.2f}"
        w(f"| {row} | {v} | {goal} | {met} | {how} |")
    w("")
    w("## All rows\n")
    w("| what | size | ours (ms) | PyTorch (ms) | ours/PyTorch | target | met? |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    for what, size, ra, rb, target, _ in rows:
        a, b = best(ra), best(rb)
        if a is None or b is None:
            ratio = "-"
            met = "n/a (unsupported)" if target is not None else "-"
        else:
            r = a / b
            ratio = f"{r:.2f}"
            met = "-" if target is None else ("yes" if r <= target else "**no**")
        tgt = "-" if target is None else f"≤ {target:g}"
        w(f"| {what} | {size} | {fmt_ms(a)} | {fmt_ms(b)} | {ratio} | {tgt} | {met} |")
    w("")
    w("Targets of this table: our AdmIRE step no slower than PyTorch's fused AdamW step "
      "(ratio ≤ 1); our mask refresh at least 5× faster than the official top-k refresh "
      "(ratio ≤ 0.2); training steps within 1.5× of PyTorch (ratio ≤ 1.5). The goals above "
      "are stricter.\n")
    w("An optimizer step at 10M parameters streams memory: AdamW reads and writes 28 bytes per "
      "parameter (θ, m and v both ways, g); our AdmIRE step adds its bit-packed mask (1/8 byte "
      "per parameter), so when both sides stream at the same bandwidth the AdmIRE row cannot "
      "go below 28.125/28 times the AdamW-fused row's ratio.\n")
    if memory:
        w("### Peak resident memory per training row\n")
        w("The high-water mark of each process (`VmHWM` for ours, `ru_maxrss` for PyTorch's), "
          "and the same above the resident memory the process held before building anything "
          "(the program; for PyTorch, Python and the torch library, several hundred MB): the "
          "memory the training itself takes. Each the lowest over the rounds.\n")
        w("| row | ours peak (GiB) | PyTorch peak (GiB) | ours above baseline (GiB) | "
          "PyTorch above baseline (GiB) | ours/PyTorch above baseline |")
        w("| --- | --- | --- | --- | --- | --- |")
        g = lambda x: "-" if x is None else f"{x / 2**30:.2f}"  # noqa: E731
        for lbl, ma, mb in memory:
            rr = "-" if not (ma[1] and mb[1]) else f"{ma[1] / mb[1]:.2f}"
            w(f"| {lbl} | {g(ma[0])} | {g(mb[0])} | {g(ma[1])} | {g(mb[1])} | {rr} |")
        w("")
    scal = sorted({r["size"] for _, d in ire for r in d["results"]
                   if r["what"] == "scaling_adamw"})
    if scal:
        w("### Optimizer step against the parameter count\n")
        w("Should be linear: the time per parameter (ns) stays flat once the arrays leave the "
          "caches.\n")
        w("| parameters | ours AdamW (ms) | ours AdmIRE (ms) | PyTorch fused AdamW (ms) | "
          "ours AdamW ns/param | ours AdmIRE ns/param | PyTorch ns/param | "
          "AdamW ours/PyTorch |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for n in scal:
            a = per_round(ire, "scaling_adamw", n)
            m = per_round(ire, "scaling_admire", n)
            t = per_round(torch_docs, "scaling_adamw", n)
            a, m, t = (best(x[0]) if x else None for x in (a, m, t))
            per = [("-" if x is None else f"{x * 1e6 / n:.3f}") for x in (a, m, t)]
            rr = "-" if not (a and t) else f"{a / t:.2f}"
            w(f"| {label(n)} | {fmt_ms(a)} | {fmt_ms(m)} | {fmt_ms(t)} | {' | '.join(per)} "
              f"| {rr} |")
        w("")
    ctxs = sorted({r["size"] for _, d in ire for r in d["results"] if r["what"] == "attention"})
    if ctxs:
        e = first(ire, "attention")
        w("### Attention against the context length\n")
        w(f"Ours: {e['detail']} (blocked, online softmax, no T×T buffer). PyTorch: "
          f"{(first(torch_docs, 'attention') or {}).get('detail', '-')}. Causal attention "
          "costs O(T²) work on both sides; the ratio to the previous row shows it.\n")
        w("| context | ours (ms) | PyTorch (ms) | ours/PyTorch | ours, × previous row |")
        w("| --- | --- | --- | --- | --- |")
        prev = None
        for t in ctxs:
            a = per_round(ire, "attention", t)
            b = per_round(torch_docs, "attention", t)
            a, b = (best(x[0]) if x else None for x in (a, b))
            rr = "-" if not (a and b) else f"{a / b:.2f}"
            grow = "-" if not (a and prev) else f"{a / prev:.2f}"
            w(f"| {t} | {fmt_ms(a)} | {fmt_ms(b)} | {rr} | {grow} |")
            prev = a
        w("")
    w("What each row compares:\n")
    seen = set()
    for what, _, _, _, _, note in rows:
        if what not in seen:
            seen.add(what)
            w(f"- **{what}**: {note}.")
    if over:
        w(f"- **AdmIRE training step / AdamW training step**: {over['detail']}; per-block "
          f"ms, AdamW {', '.join(f'{x:.0f}' for x in over['adamw_blocks_ms'])}, AdmIRE "
          f"{', '.join(f'{x:.0f}' for x in over['admire_blocks_ms'])}.")
    if ocl:
        for res in ocl["results"]:
            w(f"- **OpenCL `{res['model']}`**: {res['detail']}; "
              + "; ".join(f"{s['backend']} ({s['device']}) rounds "
                          + ", ".join(f"{x:.1f}" for x in s["round_medians_ms"]) + " ms"
                          for s in res["sides"]) + ".")
    w("")
    w("## Setup\n")
    w("- Optimizer steps: one flat `f32` parameter tensor of each size, gradient and estimator "
      "gradient fixed; AdamW lr 1e-3, weight decay 0.1, betas (0.9, 0.999), eps 1e-8; SGD lr "
      "1e-3, momentum 0.9, weight decay 5e-4; IRE κ 2, γ 0.6 (k = ⌊0.4 N⌋ sharp coordinates), "
      "β 0. Our AdmIRE step keeps the mask as bits and computes θ_base in registers; the ported "
      "official step copies θ, runs the fused AdamW step and adds (Δ·mask)·κ with a float mask.")
    w("- The official refresh, ported from IRE-SPEC §2 (`scripts/peer/torch_bench.py`, checked "
      "on small cases at start-up): `h.mul_(β).addcmul_(ĝ, ĝ, value=1-β)`, "
      "`τ = torch.topk(torch.cat([h.reshape(-1) for h in hs]), k).values[-1]`, "
      "`mask = (h <= τ)` as floats (k = 0: all flat). The official faster refresh of the "
      "Llama runs, ported the same way: `|ĝ|` by `abs_()` in place, no EMA, "
      "`m = int(N·(1 − r))` with `r = 1 − γ`, `τ = torch.kthvalue(torch.cat(...), m)`, "
      "`mask = (|ĝ| <= τ)` as booleans. Ours: `ema_square`, the global "
      "`kth_largest` (an exact selection), `mask_le`.")
    w("- Training steps: forward, loss, backward and optimizer step of the same networks (the "
      "parameter counts match exactly) on **synthetic data of the real shapes** (uniform random "
      "pixels or token ids). `mlp` (3072-512-256-10, ReLU) and `resnet20` (CIFAR ResNet-20, "
      "post-activation blocks, 1×1 conv + BN shortcuts) take batches of 128 3×32×32 images, "
      "normalized from bytes every step on both sides, no augmentation, with SGD (lr 0.1, "
      "momentum 0.9, weight decay 5e-4; PyTorch foreach=True). `lm-paper` (2 post-LN layers, "
      "d 128, 8 heads, FFN 512, ReLU, causal attention, untied output layer) takes random "
      "windows over a vocabulary of 33,278 tokens (the size of the WikiText-2 word "
      "vocabulary) at context 128 (batch 32, the paper's) and at context 1,024 (the paper's "
      "1,000, rounded; batch 8, what fits comfortably in this machine's memory on both sides), "
      "with the paper's AdamW (0.9, 0.95), weight decay 5e-4, eps 1e-16 (PyTorch fused=True "
      "where supported). `gpt2-block` is one GPT-2-small-shaped block (d 768, 12 heads, FFN "
      "3072, pre-LN, GELU, learned positions, tied embeddings) at context 1,024, batch 4, over "
      "a byte-sized vocabulary of 256 so that the block, not the embedding, is what is timed. "
      "PyTorch builds the language models from `nn.TransformerEncoderLayer` (dropout 0) and "
      "`F.cross_entropy`; ours runs through `ire-models`' `Trainer`, which also checks the loss "
      "and the gradient norm for divergence every step.")
    w("")
    w("## Per-round medians (ms) and ratios\n")
    rounds = sorted({rnd for rnd, _ in ire} | {rnd for rnd, _ in torch_docs})
    head = " | ".join(f"round {r}: ours / PyTorch (ratio)" for r in rounds)
    w(f"| what | size | {head} |")
    w("| --- | --- | " + " | ".join("---" for _ in rounds) + " |")
    for what, size, ra, rb, _, _ in rows:
        cells = []
        for r in rounds:
            a, b = ra.get(r), rb.get(r)
            if a is None or b is None:
                cells.append(f"{fmt_ms(a)} / {fmt_ms(b)}")
            else:
                cells.append(f"{fmt_ms(a)} / {fmt_ms(b)} ({a / b:.2f})")
        w(f"| {what} | {size} | " + " | ".join(cells) + " |")
    w("")
    if args.loads and os.path.exists(args.loads):
        w("Load average (1, 5, 15 min) just before each run (the benchmark itself keeps a "
          "2-core machine at a load of about 1-2; more means other jobs):\n")
        w("| round | part | side | load |")
        w("| --- | --- | --- | --- |")
        with open(args.loads) as f:
            for line in f:
                p = line.split()
                if len(p) >= 6:
                    w(f"| {p[0]} | {p[1]} | {p[2]} | {' '.join(p[3:6])} |")
        w("")
    w(NOTES_MARK)
    w("")
    w(keep_notes(args.out))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(out).rstrip("\n") + "\n")
    start = out.index("## Goals\n")
    end = out.index("## All rows\n")
    print("\n".join(out[start:end]))


NOTES_MARK = "## Notes\n\n<!-- Hand-written notes: the join script keeps this block verbatim. -->"


def keep_notes(path):
    """The hand-written notes at the end of the previous report (after NOTES_MARK), if any."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    i = text.find(NOTES_MARK)
    return text[i + len(NOTES_MARK):].strip("\n") + "\n" if i >= 0 else ""


if __name__ == "__main__":
    main()
