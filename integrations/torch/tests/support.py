"""Shared helpers of the ire_torch tests: parameters, fixed gradient streams, comparisons."""

import math

import torch

# Three tensors, N = 72 coordinates: every count int(N * rank_t) the tests ask for lies at
# least 0.1 away from an integer, so no count depends on rounding (see compat's notes).
SHAPES = [(7, 5), (13,), (3, 4, 2)]
STEPS = 40


def make_params(dtype=torch.float64, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def gradients(params, step, stream, scale=1.0):
    """A fixed gradient per (step, stream), the same for every optimizer fed from it."""
    g = torch.Generator().manual_seed(1_000_003 * step + 7919 * stream + 17)
    return [scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def feed(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def relative_error(ours, ref):
    """max |ours - ref| / max |ref| over one tensor."""
    return (ours.detach() - ref.detach()).abs().max().item() / ref.detach().abs().max().item()


def assert_close(ours, ref, rtol, what=""):
    for i, (a, b) in enumerate(zip(ours, ref)):
        err = relative_error(a, b)
        assert err <= rtol, f"{what} tensor {i}: relative error {err:.3e} > {rtol:.1e}"


def assert_masks_equal(opt, params, ref_masks, what=""):
    for i, (p, m) in enumerate(zip(params, ref_masks)):
        ours = opt.state[p]["mask"]
        assert ours.shape == m.shape, f"{what} mask {i}: shape {ours.shape} vs {m.shape}"
        assert ours.dtype == m.dtype, f"{what} mask {i}: dtype {ours.dtype} vs {m.dtype}"
        assert torch.equal(ours, m), f"{what} mask {i} differs in {(ours != m).sum()} places"


def cosine_with_warmup(it, max_lr, warmup, max_iters):
    """The language-model scripts' learning rate: linear warm-up, cosine to max_lr / 20."""
    min_lr = max_lr / 20
    if it < warmup:
        return max_lr * it / warmup
    ratio = (it - warmup) / (max_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
