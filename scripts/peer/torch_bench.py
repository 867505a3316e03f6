#!/usr/bin/env python3
"""The PyTorch half of the peer benchmark (run by scripts/peer-bench.sh).

Times on the CPU, exactly as `ire-bench`'s `peer` binary times our library (warm-up
iterations, then the median of N timed iterations, each timed on its own with
time.perf_counter), and writes JSON:

- optimizer steps on one flat f32 parameter tensor per size: AdamW (foreach=True),
  AdamW (fused=True, where this torch supports it on the CPU), SGD with momentum
  (foreach=True), and a port of the official IRE update (IRE-SPEC section 2): the mask
  refresh (EMA of the squared estimator gradient, one global threshold by torch.topk over
  the flattened values, mask = h <= threshold) and the boosted AdamW step (copy theta, base
  step, theta += (delta * mask) * kappa);
- one training step (forward, backward, optimizer step) of the same networks as the
  ire-models presets `mlp`, `resnet20`, `lm-paper` and `gpt2-block`, on synthetic data of the
  same shapes;
- the scaling of the fused AdamW step with the parameter count, and of causal attention
  (scaled_dot_product_attention, forward and backward) with the context length.

Every JSON file records the peak resident memory of the process (ru_maxrss), so the script
runs each training row in a process of its own.

Arguments have the same names and defaults as the Rust binary's.
"""

import argparse
import json
import math
import os
import resource
import time
import warnings

# torch warns once at import when numpy is absent; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def timed(warmup, iters, fn):
    """Runs fn warmup times untimed, then iters times, each timed on its own (ms)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(iters, 1)):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    s = sorted(samples)
    n = len(s)
    median = s[n // 2] if n % 2 == 1 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median_ms": median, "min_ms": s[0], "iters": n, "samples_ms": samples}


def record(out, what, size, detail, t):
    print(
        f"torch {what:<22} {size:>10}  median {t['median_ms']:>10.3f} ms  "
        f"min {t['min_ms']:>10.3f} ms",
        flush=True,
    )
    out.append({"what": what, "size": size, "detail": detail, **t})


def fused_adamw_supported():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.ones(4)
    try:
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, ValueError, TypeError):
        return False


# ---- the official IRE update, ported from IRE-SPEC section 2 ----


class IreMask:
    """The flatness mask of practical IRE with the official semantics.

    h <- beta h + (1 - beta) g_hat^2 (element-wise); k = floor((1 - gamma) N) over ALL
    parameters of all tensors together; tau = the k-th largest value of h, found with
    torch.topk on the flattened, concatenated values; mask = 1 where h <= tau (ties flat),
    so N - k + 1 coordinates are flat without ties. k = 0 makes every coordinate flat.
    """

    def __init__(self, params, gamma, beta=0.0):
        self.params = list(params)
        self.gamma = gamma
        self.beta = beta
        self.h = [torch.zeros_like(p) for p in self.params]
        self.mask = [torch.zeros_like(p) for p in self.params]  # no boost before a refresh

    @torch.no_grad()
    def refresh(self, g_hat):
        for h, g in zip(self.h, g_hat):
            h.mul_(self.beta).addcmul_(g, g, value=1 - self.beta)
        flat = torch.cat([h.reshape(-1) for h in self.h])
        k = int((1 - self.gamma) * flat.numel())
        if k == 0:
            for m in self.mask:
                m.fill_(1.0)
            return
        tau = torch.topk(flat, k).values[-1]
        for h, m in zip(self.h, self.mask):
            m.copy_((h <= tau).to(m.dtype))


class IreMaskKthvalue:
    """The official faster refresh of the Llama runs (IRE-SPEC section 2, "flat k-th
    smallest", as the official LLM code does it): no EMA, the estimate is |g_hat| taken in
    place; with rank r = 1 - gamma, m = int(N (1 - r)) over ALL parameters together; tau = the
    m-th smallest value, found with torch.kthvalue on the flattened, concatenated values;
    mask = |g_hat| <= tau as booleans (ties flat). m = 0 makes no coordinate flat.
    """

    def __init__(self, params, gamma):
        self.params = list(params)
        self.rank = 1.0 - gamma
        self.mask = [torch.zeros_like(p, dtype=torch.bool) for p in self.params]

    @torch.no_grad()
    def refresh(self, g_hat):
        h = [g.abs_() for g in g_hat]
        flat = torch.cat([x.reshape(-1) for x in h])
        m = int(flat.numel() * (1.0 - self.rank))
        if m == 0:
            for mk in self.mask:
                mk.fill_(False)
            return
        tau, _ = torch.kthvalue(flat, m)
        for x, mk in zip(h, self.mask):
            torch.le(x, tau, out=mk)


@torch.no_grad()
def ire_step(base, params, mask, kappa):
    """One boosted step: theta_old = theta; the base optimizer's full step gives theta_base;
    theta <- theta_base + (delta * mask) * kappa with delta = theta_base - theta_old."""
    old = [p.detach().clone() for p in params]
    base.step()
    for p, o, m in zip(params, old, mask):
        p.add_(p.sub(o).mul_(m).mul_(kappa))


def self_check():
    """The port against IRE-SPEC section 2 on small cases (exits on a mismatch)."""
    p = nn.Parameter(torch.zeros(5))
    m = IreMask([p], gamma=0.6)
    m.refresh([torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0]).sqrt()])
    # k = floor(0.4 * 5) = 2, tau = 3 (the 2nd largest h): h <= 3 is flat, N - k + 1 = 4.
    want = [1.0, 1.0, 1.0, 1.0, 0.0]
    if m.mask[0].tolist() != want:
        raise SystemExit(f"IRE port: mask {m.mask[0].tolist()}, want {want}")
    m.gamma = 1.0  # k = 0: all flat
    m.refresh([torch.ones(5)])
    if m.mask[0].tolist() != [1.0] * 5:
        raise SystemExit("IRE port: gamma 1 must make every coordinate flat")
    # The boosted step: theta_base + (delta * mask) * kappa with a plain SGD base step.
    old = torch.tensor([1.0, 2.0])
    grad, mask = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    p = nn.Parameter(old.clone())
    p.grad = grad
    ire_step(torch.optim.SGD([p], lr=0.1), [p], [mask], 3.0)
    base = old - 0.1 * grad
    want = base + ((base - old) * mask) * 3.0
    if not torch.equal(p.detach(), want):
        raise SystemExit(f"IRE port: boosted step {p.detach().tolist()}, want {want.tolist()}")
    # The k-th-smallest refresh: |g| = (3, 1, 2, 2, 5), gamma 0.6: m = int(5 * 0.6) = 3, tau = 2
    # (the 3rd smallest), |g| <= 2 flat: three coordinates, the two tied at tau included.
    k = IreMaskKthvalue([nn.Parameter(torch.zeros(5))], gamma=0.6)
    k.refresh([torch.tensor([-3.0, 1.0, 2.0, -2.0, 5.0])])
    want = [False, True, True, True, False]
    if k.mask[0].tolist() != want:
        raise SystemExit(f"IRE port: kthvalue mask {k.mask[0].tolist()}, want {want}")


# ---- optimizer-step benchmarks ----


def rand(n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) * 2 - 1) * scale


def optimizer_steps(n, args, fused_ok, out):
    w, it = args.opt_warmup, args.opt_iters

    def param():
        p = nn.Parameter(rand(n, 1.0, 1))
        p.grad = rand(n, 1e-2, 2)
        return p

    adamw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    p = param()
    opt = torch.optim.AdamW([p], foreach=True, **adamw)
    record(out, "adamw_foreach", n, "AdamW foreach=True", timed(w, it, opt.step))
    del opt, p

    if fused_ok:
        p = param()
        opt = torch.optim.AdamW([p], fused=True, **adamw)
        record(out, "adamw_fused", n, "AdamW fused=True", timed(w, it, opt.step))
        del opt, p
    else:
        out.append(
            {"what": "adamw_fused", "size": n, "unsupported": True,
             "detail": f"AdamW fused=True is not supported on the CPU in torch {torch.__version__}"}
        )

    p = param()
    opt = torch.optim.SGD([p], lr=1e-3, momentum=0.9, weight_decay=5e-4, foreach=True)
    record(out, "sgd_momentum_foreach", n, "SGD momentum 0.9, foreach=True",
           timed(w, it, opt.step))
    del opt, p

    # The official boosted step around the fastest AdamW this torch has on the CPU.
    p = param()
    base = torch.optim.AdamW([p], **adamw, **({"fused": True} if fused_ok else {"foreach": True}))
    ire = IreMask([p], args.gamma)
    g = torch.Generator().manual_seed(4)
    ire.mask[0].copy_((torch.rand(n, generator=g) < 0.8).float())
    record(out, "admire_official", n,
           f"clone + AdamW {'fused' if fused_ok else 'foreach'} + boost, kappa 2",
           timed(w, it, lambda: ire_step(base, [p], ire.mask, 2.0)))

    g_hat = [rand(n, 1e-2, 3)]
    k = int((1 - args.gamma) * n)
    record(out, "mask_refresh_official", n,
           f"EMA of g_hat^2 (beta 0) + torch.topk (k {k}) + mask",
           timed(w, it, lambda: ire.refresh(g_hat)))
    # The official faster refresh works on the gradient in place (|g| by abs_), as the official
    # code does; abs_ of values already made non-negative costs the same each iteration.
    kth = IreMaskKthvalue([p], args.gamma)
    g_abs = [rand(n, 1e-2, 3)]
    m = int(n * (1.0 - kth.rank))
    record(out, "mask_refresh_kthvalue", n,
           f"|g_hat| in place + torch.kthvalue (m {m}) + bool mask",
           timed(w, it, lambda: kth.refresh(g_abs)))
    del base, ire, kth, p, g_hat, g_abs


# ---- the networks of the ire-models presets ----


class Mlp(nn.Module):
    """`mlp`: flatten, Linear 3072-512, ReLU, Linear 512-256, ReLU, Linear 256-10."""

    def __init__(self, inp=3 * 32 * 32, hidden=(512, 256), classes=10):
        super().__init__()
        dims = [inp, *hidden, classes]
        layers = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    """Post-activation basic block; 1x1 convolution + batch norm on the shortcut whenever
    the width or the resolution changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class ResNet(nn.Module):
    """`resnet20`: CIFAR ResNet-20 (3 stages of 3 blocks, widths 16, 32, 64)."""

    def __init__(self, depth=20, base=16, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        blocks, c = [], base
        for s, w in enumerate([base, 2 * base, 4 * base]):
            for i in range(n):
                blocks.append(BasicBlock(c, w, 2 if s > 0 and i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def sinusoids(t, d):
    pos = torch.arange(t, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.float()


class PaperLm(nn.Module):
    """`lm-paper`: token embedding + per-token sinusoids, 2 post-LN blocks (d 128, 8 heads,
    FFN 512, ReLU, biases, no dropout), causal attention, an untied output layer with bias."""

    def __init__(self, vocab, ctx, d=128, heads=8, ffn=512, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.register_buffer("pe", sinusoids(ctx, d), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d, heads, ffn, dropout=0.0, activation="relu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.lm_head = nn.Linear(d, vocab)
        self.register_buffer(
            "causal", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False
        )

    def forward(self, x):
        h = self.embed(x) + self.pe[: x.size(1)]
        h = self.encoder(h, mask=self.causal, is_causal=True)
        return self.lm_head(h)


class GptLm(nn.Module):
    """`gpt2-block` (and any GPT-style preset): token and learned position embeddings, pre-LN
    blocks (GELU, biases, no dropout), a final LayerNorm, the output layer tied to the token
    embedding (no bias)."""

    def __init__(self, vocab, ctx, d=768, heads=12, layers=1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.register_buffer(
            "causal", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False
        )

    def forward(self, x):
        h = self.embed(x) + self.pos.weight[: x.size(1)]
        h = self.encoder(h, mask=self.causal, is_causal=True)
        return F.linear(self.norm(h), self.embed.weight)


LM_NETWORKS = {"lm-paper": PaperLm, "gpt2-block": GptLm}


def train_step(model_name, args, fused_ok, out):
    torch.manual_seed(0)
    if model_name.startswith(("lm-", "gpt", "llama")):
        if model_name not in LM_NETWORKS:
            raise SystemExit(f"no PyTorch network for `{model_name}`")
        b, t, vocab = args.lm_batch, args.lm_context, args.lm_vocab
        model = LM_NETWORKS[model_name](vocab, t)
        # The paper's WikiText-2 recipe: AdamW (0.9, 0.95), weight decay 5e-4, eps 1e-16.
        kind = {"fused": True} if fused_ok else {"foreach": True}
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), eps=1e-16,
                                weight_decay=5e-4, **kind)
        tokens = torch.randint(vocab, (16 * b * t + 1,))
        ar = torch.arange(t)

        def batch():
            off = torch.randint(tokens.numel() - t, (b,))[:, None] + ar
            return tokens[off], tokens[off + 1]

        def loss_of(x, y):
            return F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))

        detail = (f"AdamW {'fused' if fused_ok else 'foreach'}; batch {b} x context {t}, "
                  f"vocabulary {vocab}; synthetic tokens")
        size = b
    else:
        b = args.image_batch
        model = {"mlp": Mlp, "resnet20": ResNet}.get(model_name)
        if model is None:
            raise SystemExit(f"no PyTorch network for `{model_name}`")
        model = model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                              foreach=True)
        count = 8 * b
        pixels = torch.randint(256, (count, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(10, (count,))
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
        state = {"step": 0, "order": torch.randperm(count)}

        def batch():
            # A shuffled batch, normalized from bytes each step (as the Rust loader does).
            i = state["step"] % (count // b)
            if i == 0:
                state["order"] = torch.randperm(count)
            state["step"] += 1
            idx = state["order"][i * b:(i + 1) * b]
            return (pixels[idx].float().div_(255) - mean) / std, labels[idx]

        def loss_of(x, y):
            return F.cross_entropy(model(x), y)

        detail = f"SGD momentum 0.9 foreach; batch {b} x 3x32x32, 10 classes; synthetic images"
        size = b
    model.train()
    params = sum(p.numel() for p in model.parameters())

    def step():
        x, y = batch()
        opt.zero_grad()
        loss = loss_of(x, y)
        loss.backward()
        opt.step()

    t = timed(args.train_warmup, args.train_iters, step)
    record(out, f"train_{model_name}", size, f"{detail}; {params} parameters", t)
    out[-1]["params"] = params
    out[-1]["context"] = args.lm_context if model_name in LM_NETWORKS else 0


def scaling(args, fused_ok, out):
    """PyTorch's fastest AdamW on the CPU at every size of the scaling table."""
    kind = {"fused": True} if fused_ok else {"foreach": True}
    for n in (int(s) for s in args.scaling_sizes.split(",") if s):
        it = min(max(args.opt_iters * 10_000_000 // max(n, 1), 5), max(args.opt_iters, 5))
        p = nn.Parameter(rand(n, 1.0, 1))
        p.grad = rand(n, 1e-2, 2)
        opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                                **kind)
        record(out, "scaling_adamw", n, f"AdamW {'fused' if fused_ok else 'foreach'}",
               timed(2, it, opt.step))
        del opt, p


def attention(args, out):
    """Causal scaled_dot_product_attention of one sequence, forward and backward."""
    h, dh = args.attention_heads, args.attention_head_dim
    for t in (int(s) for s in args.attention_contexts.split(",") if s):
        q, k, v = (torch.randn(1, h, t, dh, requires_grad=True) for _ in range(3))
        dout = torch.randn(1, h, t, dh)

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(dout)
            q.grad = k.grad = v.grad = None

        record(out, "attention", t,
               f"causal scaled_dot_product_attention forward + backward, 1 sequence, "
               f"{h} heads x {dh}",
               timed(1, 3 if t >= 2048 else 10, fwd_bwd))


def resident_bytes():
    """The resident memory of this process now (VmRSS, bytes; Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    # What the process holds before any benchmark (Python and the torch library): the baseline
    # the training rows' memory is measured above.
    baseline_rss = resident_bytes()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--part", choices=["optim", "train", "scaling", "attention", "all"],
                    default="all")
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--opt-warmup", type=int, default=5)
    ap.add_argument("--opt-iters", type=int, default=50)
    ap.add_argument("--gamma", type=float, default=0.6)
    ap.add_argument("--train-warmup", type=int, default=3)
    ap.add_argument("--train-iters", type=int, default=10)
    ap.add_argument("--models", default="mlp,resnet20,lm-paper")
    ap.add_argument("--image-batch", type=int, default=128)
    ap.add_argument("--lm-batch", type=int, default=32)
    ap.add_argument("--lm-context", type=int, default=128)
    ap.add_argument("--lm-vocab", type=int, default=33278)
    ap.add_argument("--scaling-sizes", default="1000000,3000000,10000000,30000000,100000000")
    ap.add_argument("--attention-contexts", default="128,256,512,1024,2048,4096")
    ap.add_argument("--attention-heads", type=int, default=8)
    ap.add_argument("--attention-head-dim", type=int, default=16)
    args = ap.parse_args()

    # Same worker count as the Rust side (rayon's pool): one thread per core by default.
    torch.set_num_threads(args.threads)
    self_check()
    fused_ok = fused_adamw_supported()
    out = []
    if args.part in ("optim", "all"):
        for n in (int(s) for s in args.sizes.split(",") if s):
            optimizer_steps(n, args, fused_ok, out)
    if args.part in ("train", "all"):
        for m in (s for s in args.models.split(",") if s):
            train_step(m, args, fused_ok, out)
    if args.part == "scaling":
        scaling(args, fused_ok, out)
    if args.part == "attention":
        attention(args, out)
    doc = {
        "impl": "torch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fused_adamw_cpu": fused_ok,
        "results": out,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "baseline_rss_bytes": baseline_rss,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {args.json}", flush=True)


if __name__ == "__main__":
    main()
