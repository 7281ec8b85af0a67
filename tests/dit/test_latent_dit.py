"""Latent DiT on subspace data: the closed-form noise, the data, the model's form, a CLI fit."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from data_modules import SubspaceDataModule
from tests.conftest import run_cli
from zoo.core.errors import ConfigError, ShapeError
from zoo.dit import LatentDiT

CONFIG = "configs/dit/latent_subspace.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_eps(basis: torch.Tensor, x: torch.Tensor, abar: float) -> torch.Tensor:
    """``-sqrt(1 - abar) grad log N(x; 0, abar B B^T + (1 - abar) I)`` by autograd, in float64."""
    basis = basis.double()
    cov = abar * basis @ basis.T + (1 - abar) * torch.eye(len(basis), dtype=torch.float64)
    x = x.double().clone().requires_grad_(True)
    log_p = torch.distributions.MultivariateNormal(torch.zeros(len(basis), dtype=torch.float64), cov).log_prob(x)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    return -math.sqrt(1 - abar) * grad


@pytest.mark.parametrize("abar", [0.999, 0.5, 0.01])
def test_true_eps_matches_autograd_of_the_gaussian_marginal(abar):
    dm = SubspaceDataModule(ambient_dim=12, latent_dim=3, seed=4)
    x = torch.randn(16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    expected = brute_force_eps(dm.basis_float64, x, abar)
    torch.testing.assert_close(dm.true_eps(x, abar), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dm.true_eps(x, torch.full((16,), abar, dtype=torch.float64)), expected,
                               rtol=1e-6, atol=1e-6)  # one abar per row


def test_basis_is_orthonormal_and_data_lie_in_its_span():
    dm = SubspaceDataModule(ambient_dim=20, latent_dim=5, num_train=300, seed=2)
    dm.setup()
    basis = dm.basis
    assert basis.shape == (20, 5)
    torch.testing.assert_close(basis.T @ basis, torch.eye(5), atol=1e-5, rtol=0)
    x, labels = dm.train_set.tensors
    assert x.shape == (300, 20) and labels.shape == (300,) and not labels.any()
    torch.testing.assert_close(x @ basis @ basis.T, x, atol=1e-5, rtol=0)
    h = x @ basis  # ~ N(0, I_5)
    assert h.mean(0).abs().max() < 0.3 and (h.std(0) - 1).abs().max() < 0.2
    assert torch.equal(SubspaceDataModule(ambient_dim=20, latent_dim=5, seed=2).basis, basis)
    assert not torch.equal(SubspaceDataModule(ambient_dim=20, latent_dim=5, seed=3).basis, basis)


def test_mixture_returns_labels_in_the_span():
    dm = SubspaceDataModule(ambient_dim=8, latent_dim=2, mixture=3, num_train=200, seed=0)
    dm.setup()
    x, labels = dm.train_set.tensors
    assert set(labels.tolist()) == {0, 1, 2}
    torch.testing.assert_close(x @ dm.basis @ dm.basis.T, x, atol=1e-5, rtol=0)
    h = x @ dm.basis
    for k in range(3):  # each component is N(mu_k, I) in latent coordinates
        assert (h[labels == k].mean(0) - dm.means[k]).abs().max() < 0.5


@pytest.mark.parametrize("abar", [0.999, 0.5, 0.01])
def test_mixture_true_eps_matches_autograd_of_the_mixture_marginal(abar):
    """``x_t ~ (1/K) sum_k N(sqrt(abar) B mu_k, abar B B^T + (1 - abar) I)``, by autograd in float64."""
    dm = SubspaceDataModule(ambient_dim=10, latent_dim=3, mixture=4, seed=5)
    basis, means = dm.basis_float64, dm.means.double()
    cov = abar * basis @ basis.T + (1 - abar) * torch.eye(10, dtype=torch.float64)
    x = (torch.randn(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_(True)
    log_p = torch.logsumexp(torch.stack([
        torch.distributions.MultivariateNormal(math.sqrt(abar) * basis @ mu, cov).log_prob(x) for mu in means]), dim=0)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    expected = -math.sqrt(1 - abar) * grad
    torch.testing.assert_close(dm.true_eps(x.detach(), abar), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dm.true_eps(x.detach(), torch.full((12,), abar, dtype=torch.float64)), expected,
                               rtol=1e-6, atol=1e-6)


def test_latent_dit_with_the_true_basis_and_skip_is_exact_on_gaussian_latents():
    """``W = B`` and a zero DiT give ``eps_theta = eps*``: the form of the module docstring."""
    dm = SubspaceDataModule(ambient_dim=16, latent_dim=4, seed=1)
    model = LatentDiT(ambient_dim=16, latent_dim=4).double()
    with torch.no_grad():
        model.encoder.weight.copy_(dm.basis_float64.T)
    x = torch.randn(10, 16, dtype=torch.float64)
    t = torch.tensor([0, 1, 5, 50, 100, 300, 500, 700, 900, 999])
    abar = model.diffusion.alphas_cumprod[t]
    torch.testing.assert_close(model(x, t), dm.true_eps(x, abar, model.diffusion.one_minus_alphas_cumprod[t]))
    assert model.subspace_error(dm.basis) < 1e-10
    assert LatentDiT(ambient_dim=16, latent_dim=4).subspace_error(dm.basis) > 1  # a random W is far off
    with pytest.raises(ShapeError, match=r"\[16, 4\]"):
        model.subspace_error(torch.zeros(16, 3))
    with pytest.raises(ShapeError, match=r"x must have shape \[\*, 16\], got \[10, 15\]"):
        model(torch.randn(10, 15, dtype=torch.float64), t)


def test_token_layout_runs_any_latent_dim():
    model = LatentDiT(ambient_dim=10, latent_dim=3, layout="token")
    assert model(torch.randn(5, 10), torch.arange(5)).shape == (5, 10)


def test_in_context_conditioning_starts_at_the_skip_and_sees_the_time():
    """The time is a token (the theory paper's form): the zero-initialised output layer makes the DiT
    start at ``f = abar z`` as adaLN-Zero does; after a change of weights the output depends on t."""
    model = LatentDiT(ambient_dim=8, latent_dim=4, conditioning="in_context").double()
    assert model.net.conditioning == "in_context"
    dm = SubspaceDataModule(ambient_dim=8, latent_dim=4, seed=0)
    with torch.no_grad():
        model.encoder.weight.copy_(dm.basis_float64.T)
    x, t = torch.randn(6, 8, dtype=torch.float64), torch.tensor([0, 10, 100, 400, 800, 999])
    table = model.diffusion
    torch.testing.assert_close(model(x, t), dm.true_eps(x, table.alphas_cumprod[t], table.one_minus_alphas_cumprod[t]))
    with torch.no_grad():
        torch.nn.init.normal_(model.net.final.linear.weight)
    a = model(x[:1].repeat(2, 1), torch.tensor([10, 900]))
    b = dm.true_eps(x[:1].repeat(2, 1), table.alphas_cumprod[[10, 900]], table.one_minus_alphas_cumprod[[10, 900]])
    assert not torch.allclose(a - b, (a - b)[[1, 0]])  # the correction differs between the two times
    with pytest.raises(ConfigError, match="conditioning must be one of"):
        LatentDiT(conditioning="cross")


def test_sample_is_seeded_and_restores_the_training_mode():
    model = LatentDiT(ambient_dim=8, latent_dim=4, eval_steps=5)
    model.train()
    a = model.sample(6, generator=torch.Generator().manual_seed(3))
    b = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 8) and torch.equal(a, b) and model.training
    assert not torch.equal(a, model.sample(6, generator=torch.Generator().manual_seed(4)))
    ddpm = model.sample(6, steps=0, generator=torch.Generator().manual_seed(3))
    assert ddpm.shape == (6, 8) and not torch.equal(ddpm, a)
    with pytest.raises(ConfigError, match=r"eval_samples must be >= 2 and eval_steps >= 0 \(0: DDPM\)"):
        LatentDiT(eval_steps=-1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ambient_dim=4, latent_dim=5), "latent_dim must lie in [1, ambient_dim=4], got latent_dim=5"),
    (dict(ambient_dim=4, latent_dim=0), "latent_dim must lie in [1, ambient_dim=4], got latent_dim=0"),
])
def test_bad_dimensions_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        SubspaceDataModule(**kwargs)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        LatentDiT(**kwargs)


def test_grid_layout_needs_a_square_latent_dim():
    with pytest.raises(ConfigError, match="square latent_dim, got 3"):
        LatentDiT(ambient_dim=8, latent_dim=3)


def test_cli_fit_lowers_score_and_subspace_errors(tmp_path):
    # The bounds were measured with fp32 CPU arithmetic; on a GPU (TF32 convolutions, other kernels)
    # the same seed follows another trajectory (an H200 reached 0.125 against the 0.1 bound), so the
    # claim is checked on the CPU wherever the suite runs.
    cli = run_cli("fit", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                  "--trainer.max_epochs=8")
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("val/score_error")]
    first, last = rows[0], rows[-1]
    assert float(last["val/score_error"]) < 0.1 * float(first["val/score_error"])  # seed 0: 0.81 -> 0.011
    assert float(last["val/subspace_error"]) < 0.1 * float(first["val/subspace_error"])  # 1.85 -> 0.011
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/subspace_error"]) < 0.1  # a random 4-plane in R^32 is at ~7
    assert float(metrics["val/score_error"]) < 0.05
    untrained = LatentDiT(ambient_dim=32, latent_dim=4, eval_samples=128)
    trained = LatentDiT.load_from_checkpoint(next(tmp_path.rglob("last.ckpt")), weights_only=True, eval_samples=128)
    w2 = {}
    for name, model in (("untrained", untrained), ("trained", trained)):
        (result,) = cli.trainer.test(model, datamodule=cli.datamodule, verbose=False)
        w2[name] = result["test/w2"]
        assert {"test/mmd", "test/sliced_w2", "test/score_error", "test/subspace_error"} <= set(result)
    assert w2["trained"] < 0.1 * w2["untrained"]  # exact W2^2 to N(0, B B^T) of the samples' Gaussian fit


@pytest.mark.slow
def test_score_error_is_flat_in_the_ambient_dimension_at_a_fixed_latent_dimension():
    """The latent-DiT theory's claim at tiny scale, with the rate benchmark's own training and
    evaluation (``benchmarks/dit/latent_rates.py``): at d0 = 4, n = 256 and the same 150 steps,
    D = 8 and D = 64 reach score errors within a factor of 4 of each other (measured here: 0.057
    and 0.052), far below the untrained model's."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("latent_dit_rates", ROOT / "benchmarks" / "dit" / "latent_rates.py")
    rates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rates)
    errors = {d: rates.run(256, d, 4, 0, "adaln_zero", 0, 150, 64)["score_error"] for d in (8, 64)}
    untrained = rates.evaluate(LatentDiT(ambient_dim=64, latent_dim=4), SubspaceDataModule(ambient_dim=64, latent_dim=4))[0]
    assert max(errors.values()) < 0.25 * untrained
    assert 0.25 < errors[8] / errors[64] < 4
