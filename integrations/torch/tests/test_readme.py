"""The README's two ire_torch examples run as written (on a tiny synthetic data set)."""

import os
import re

import torch

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


def _examples():
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## IRE for PyTorch"):text.index("## Architecture")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 8, 784, generator=g)
    y = torch.randint(0, 10, (24, 8), generator=g)
    return list(zip(x, y))


def test_the_readme_examples_run():
    modern, compat = _examples()
    env = {"loader": _data()}
    exec(compile(modern, "README: ire_torch.IRE", "exec"), env)
    assert env["opt"].step_count == 24
    assert env["opt"].last_report.kappa < 2.0  # κ decays with the cosine schedule
    model = env["model"]
    env2 = {"loader": _data(), "model": model, "epochs": 3, "x_estimate": torch.randn(8, 784)}
    exec(compile(compat, "README: compat", "exec"), env2)
    flat = float(env2["flat"])
    # rank 0.1: about 90 % of all coordinates flat, the first layer's share near that.
    assert 0.5 < flat < 1.0
