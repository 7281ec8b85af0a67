"""Latent DiT on subspace data: the closed-form noise, the data, the model's form, a CLI fit."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from data_modules import SubspaceDataModule
from tests.conftest import run_cli
from zoo.errors import ConfigError, ShapeError
from zoo.models import LatentDiT

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
    with pytest.raises(ConfigError, match="mixture=3"):
        dm.true_eps(x, 0.5)


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
    cli = run_cli("fit", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                  "--trainer.max_epochs=8")
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("val/score_error")]
    first, last = rows[0], rows[-1]
    assert float(last["val/score_error"]) < 0.1 * float(first["val/score_error"])  # seed 0: 0.81 -> 0.011
    assert float(last["val/subspace_error"]) < 0.1 * float(first["val/subspace_error"])  # 1.85 -> 0.011
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/subspace_error"]) < 0.1  # a random 4-plane in R^32 is at ~7
    assert float(metrics["val/score_error"]) < 0.05
