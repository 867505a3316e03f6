"""CUDA tensors, stepped in place on torch's current stream (the extension's feature ``cuda``).

Every test here needs a CUDA device: it is skipped when, and only when, torch reports none
(``torch.cuda.is_available()`` is False). Where torch has a GPU, a build without the feature
fails these tests rather than skipping them. Each CUDA run is compared with the same run on CPU
copies of the tensors: element-wise kernels are one formula on both backends and the
threshold selection is exact, so float64 results agree to 1e-12 relative and masks exactly.
"""

import pytest
import torch

import ire_torch
from support import assert_close, clone_params, feed, gradients, make_params

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="torch reports no CUDA device (torch.cuda.is_available() is False)",
)

ESTIMATE, TRAIN = 0, 1
STEPS = 12


def _on_cuda(params):
    return [torch.nn.Parameter(p.detach().clone().cuda()) for p in params]


def _feed_both(cpu, gpu, grads):
    feed(cpu, grads)
    feed(gpu, [g.cuda() for g in grads])


def _on(stream, call):
    """``call()`` with ``stream`` current (None: the current one), ordered after the work
    queued before it and before the work queued after, as torch asks of the caller."""
    if stream is None:
        return call()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        result = call()
    torch.cuda.current_stream().wait_stream(stream)
    return result


def _run_pair(make_opt, *, stream=None):
    """The same IRE run on CPU parameters and on CUDA copies; returns both optimizers and
    parameter lists after STEPS steps (refreshes from a fixed estimator stream)."""
    cpu = make_params(torch.float64, seed=41)
    gpu = _on_cuda(cpu)
    a, b = make_opt(cpu), make_opt(gpu)
    assert b._engine.device == "cuda:0" and a._engine.device == "cpu"
    for it in range(STEPS):
        assert a.refresh_due() == b.refresh_due()
        if a.refresh_due():
            _feed_both(cpu, gpu, gradients(cpu, it, ESTIMATE))
            a.refresh()
            _on(stream, b.refresh)
        _feed_both(cpu, gpu, gradients(cpu, it, TRAIN))
        a.step()
        # Every other step on the caller's stream: the engine follows torch there.
        _on(stream if it % 2 == 1 else None, b.step)
    torch.cuda.synchronize()
    return a, b, cpu, gpu


def _assert_same(a, b, cpu, gpu):
    assert_close([p.cpu() for p in gpu], cpu, 1e-12, "cuda vs cpu")
    for p, q in zip(cpu, gpu):
        mq = b.state[q]["mask"]
        assert mq.device == q.device
        assert torch.equal(a.state[p]["mask"], mq.cpu())
        assert_close([b.state[q]["estimate"].cpu()], [a.state[p]["estimate"]], 1e-12)


def test_the_build_reaches_cuda_where_torch_has_it():
    assert ire_torch._native.CUDA, (
        "torch reports a CUDA device but this ire_torch was built without the `cuda` feature"
    )


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_fused_steps_on_cuda_equal_the_cpu_ones(base):
    def make(ps):
        return ire_torch.IRE(ps, base=base, lr=1e-2, weight_decay=1e-3, kappa=2.0, gamma=0.7,
                             refresh_every=4, warmup_steps=2)

    a, b, cpu, gpu = _run_pair(make)
    assert b._engine.kind == a._engine.kind
    _assert_same(a, b, cpu, gpu)


def test_around_torch_adam_on_cuda_and_on_a_callers_stream():
    def make(ps):
        adam = torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99))
        return ire_torch.IRE(ps, base=adam, kappa=1.5, gamma=0.6, refresh_every=3)

    a, b, cpu, gpu = _run_pair(make, stream=torch.cuda.Stream())
    assert b._engine.kind == "external-base"
    # torch's Adam on CUDA and on the CPU may round differently; the boost adds nothing more.
    assert_close([p.cpu() for p in gpu], cpu, 1e-10, "cuda vs cpu")
    for p, q in zip(cpu, gpu):
        assert torch.equal(a.state[p]["mask"], b.state[q]["mask"].cpu())


def test_cuda_state_dict_round_trips_bit_identically():
    ps = _on_cuda(make_params(torch.float32, seed=5))
    opt = ire_torch.IRE(ps, base="adamw", lr=1e-2, kappa=2.0, gamma=0.5, refresh_every=2)
    for it in range(3):
        if opt.refresh_due():
            feed(ps, [g.cuda() for g in gradients(ps, it, ESTIMATE)])
            opt.refresh()
        feed(ps, [g.cuda() for g in gradients(ps, it, TRAIN)])
        opt.step()
    saved = opt.state_dict()
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    other = ire_torch.IRE(qs, base="adamw", lr=1e-2, kappa=2.0, gamma=0.5, refresh_every=2)
    other.load_state_dict(saved)
    for it in range(3, 6):
        g = [x.cuda() for x in gradients(ps, it, TRAIN)]
        if opt.refresh_due():
            e = [x.cuda() for x in gradients(ps, it, ESTIMATE)]
            feed(ps, e)
            feed(qs, e)
            opt.refresh()
            other.refresh()
        feed(ps, g)
        feed(qs, g)
        opt.step()
        other.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_cuda_steps_write_in_place_and_refuse_tensors_on_another_device():
    ps = _on_cuda(make_params(torch.float32, seed=6))
    before = [p.data_ptr() for p in ps]
    opt = ire_torch.IRE(ps, base="sgd", lr=0.1, kappa=1.0, gamma=0.5, refresh_every=1000,
                        warmup_steps=1000)
    feed(ps, [g.cuda() for g in gradients(ps, 0, TRAIN)])
    start = [p.detach().clone() for p in ps]
    opt.step()
    assert [p.data_ptr() for p in ps] == before
    for p, s in zip(ps, start):
        assert torch.allclose(p.detach(), s - 0.1 * p.grad, rtol=1e-6, atol=0.0)
    # A CPU gradient for a CUDA parameter is refused by name, and nothing moves.
    ps[1].grad = ps[1].grad.cpu()
    kept = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=r"gradient of parameter 1 is on device `cpu`, but the "
                                         r"optimizer's parameters are on `cuda:0`"):
        opt.step()
    for p, k in zip(ps, kept):
        assert torch.equal(p.detach(), k)
    # Parameters on two devices are refused when the optimizer is made.
    with pytest.raises(ValueError, match=r"parameter 1 is on device `cpu`"):
        ire_torch.IRE([ps[0], torch.nn.Parameter(torch.zeros(3))], base="sgd", lr=0.1)


def test_a_cpu_optimizer_refuses_cuda_gradients():
    ps = make_params(torch.float64, seed=7)
    opt = ire_torch.IRE(ps, base="sgd", lr=0.1)
    feed(ps, gradients(ps, 0, TRAIN))
    ps[0].grad = ps[0].grad.cuda()
    with pytest.raises(ValueError, match=r"gradient of parameter 0 is on device `cuda:0`"):
        opt.step()
