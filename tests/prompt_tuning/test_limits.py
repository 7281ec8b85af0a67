"""The one-layer, one-head transformer of ``zoo.prompt_tuning.limits`` against a slow loop reference
in fp64; the prompt path equals a manual prepend; only the prompt trains; the fast attention on
prompt-induced queries and keys is accurate at tiny entries and degrades as they grow; one-line
errors."""

from __future__ import annotations

import pytest
import torch

from data_modules.seq2seq import lipschitz_map
from zoo.core.errors import ConfigError, ShapeError
from zoo.prompt_tuning.limits import (
    OneLayerTransformer,
    PromptedTransformer,
    entry_scale,
    fit,
    prompt_qkv,
    reference_forward,
    trainable_parameters,
    worst_pair_error,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_equals_slow_loop_reference_fp64():
    model = OneLayerTransformer(dim=3, hidden=5, max_len=8, seed=1).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 3, generator=g, dtype=torch.float64)
    prompt = torch.randn(3, 3, generator=g, dtype=torch.float64)
    for p in (None, prompt):
        torch.testing.assert_close(model(x, p), reference_forward(model, x, p), rtol=1e-12, atol=1e-12)


def test_prompt_path_equals_manual_prepend():
    model = OneLayerTransformer(dim=4, hidden=8, seed=2).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 5, 4, generator=g, dtype=torch.float64)
    tuned = PromptedTransformer(model, 6).double()
    prompt = tuned.prompt.embedding.weight
    z = torch.cat([prompt[None].expand(3, -1, -1), x + model.position[:5]], dim=1)
    torch.testing.assert_close(tuned(x), model.block(z)[:, 6:], rtol=0, atol=0)
    torch.testing.assert_close(tuned(x), reference_forward(model, x, prompt.detach()), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(tuned(x), model(x))


def test_only_the_prompt_trains_and_the_fit_lowers_the_error():
    model = OneLayerTransformer(dim=2, hidden=8, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    tuned = PromptedTransformer(model, 4)
    assert trainable_parameters(tuned) == 4 * 2
    f = lipschitz_map(2, 2, seed=0)
    x = torch.rand(16, 2, 2, generator=torch.Generator().manual_seed(0))
    y = f(x) + model(x).detach().mean(0)
    losses = fit(tuned, x, y, steps=60, lr=0.1)
    assert losses[-1] < 0.9 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert worst_pair_error(tuned(x), y) < worst_pair_error(model(x), y)


def test_lipschitz_map_is_one_lipschitz():
    f = lipschitz_map(3, 2, seed=4)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(200, 3, 2, generator=g), torch.rand(200, 3, 2, generator=g)
    ratio = (f(a) - f(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 1 + 1e-5


def test_fast_attention_error_small_at_tiny_entries_and_grows_with_scale():
    model = OneLayerTransformer(dim=4, hidden=8, max_len=256, seed=0, position_scale=0.01).double()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 256, 4, generator=g, dtype=torch.float64)
    prompt = torch.randn(8, 4, generator=g, dtype=torch.float64)
    errors, bounds = [], []
    with torch.no_grad():
        for factor in (0.02, 0.5, 2.0, 8.0):
            xs, p = x * factor, prompt * factor
            exact = model(xs, p)
            errors.append(float((model(xs, p, "fast", 4) - exact).norm() / exact.norm()))
            bounds.append(entry_scale(*prompt_qkv(model, xs, p)[:2]))
    assert bounds == sorted(bounds)
    assert errors[0] < 1e-6
    assert errors == sorted(errors)
    assert errors[-1] > 1e3 * errors[0]


def test_bad_input_ends_in_one_line():
    model = OneLayerTransformer(dim=4, max_len=8)
    with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer, got 0"):
        PromptedTransformer(model, 0)
    with pytest.raises(ShapeError, match="soft prompt width 3 does not match the transformer's width 4"):
        model(torch.rand(1, 2, 4), torch.rand(2, 3))
    with pytest.raises(ShapeError, match="sequence length 9 exceeds max_len=8"):
        model(torch.rand(1, 9, 4))
    with pytest.raises(ConfigError, match="attention must be one of exact, fast, got 'linear'"):
        model(torch.rand(1, 2, 4), attention="linear")
    with pytest.raises(ConfigError, match="dim must be a positive integer, got 0"):
        OneLayerTransformer(dim=0)
