"""In-context regression: the tasks, the baselines against loop references, the backbones' masking
and token layouts, ReLU attention against a naive loop, the one-GD-step construction, direct
training, bad input, the curriculum, and a tiny model trained through the real CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_modules.icl_tasks import ICLTaskDataModule, sample_prompts
from tests.conftest import run_cli
from zoo.core.cli import main
from zoo.core.errors import ConfigError, ShapeError
from zoo.icl.baselines import averaging, direct_training, gd_prediction, knn, least_squares
from zoo.icl.model import ICLTransformer, LinearSelfAttention, attend, encoder_tokens, interleave
from zoo.icl.module import Curriculum, InContextRegression

pytestmark = pytest.mark.usefixtures("one_thread")


def prompts(task="linear", num=16, n=12, d=4, seed=0, **kwargs):
    return sample_prompts(task, num, n, d, torch.Generator().manual_seed(seed), **kwargs)


# -- tasks ---------------------------------------------------------------------------------------
def test_linear_prompts_are_linear_with_unit_variance():
    xs, ys, var = prompts("linear", num=4000, n=8, d=5)
    w = torch.linalg.lstsq(xs[:10].double(), ys[:10, :, None].double()).solution  # exact fit: y = X w
    assert torch.allclose(xs[:10].double() @ w, ys[:10, :, None].double(), atol=1e-5)
    assert ys.var().item() == pytest.approx(1.0, abs=0.05) and torch.all(var == 1)


def test_sparse_noisy_and_curriculum_padding():
    xs, ys, _ = prompts("sparse_linear", num=50, n=20, d=6, sparsity=2)
    w = torch.linalg.lstsq(xs.double(), ys[..., None].double()).solution[..., 0]
    assert torch.all((w.abs() > 1e-6).sum(-1) <= 2)
    _, _, var = prompts("noisy_linear", num=3, noise_std=0.5)
    assert torch.allclose(var, torch.full((3,), 1.25))
    xs, _, _ = sample_prompts("linear", 5, 7, 6, torch.Generator().manual_seed(0), dims=2)
    assert torch.all(xs[..., 2:] == 0) and torch.all(xs[..., :2] != 0)


def test_relu_net_targets_follow_the_network_and_are_normalized():
    """Reference: rebuild each prompt's network from the same stream with an explicit loop."""
    depth, hidden, d, n, num, norm = 3, 8, 3, 6, 4, 64
    xs, ys, _ = prompts("relu_net", num=num, n=n, d=d, depth=depth, hidden=hidden, norm_samples=norm)
    g = torch.Generator().manual_seed(0)
    x_ref = torch.randn(num, n, d, generator=g)
    widths = [d, hidden, hidden, 1]
    weights = [torch.randn(num, o, i, generator=g) * math.sqrt(2 / i) for i, o in zip(widths, widths[1:])]
    reference = torch.randn(num, norm, d, generator=g)
    for p in range(num):
        def f(x):
            h = x
            for layer, w in enumerate(weights):
                h = h @ w[p].T
                h = torch.relu(h) if layer < depth - 1 else h
            return h[:, 0]
        ref_out = f(reference[p])
        expected = (f(x_ref[p]) - ref_out.mean()) / ref_out.std()
        assert torch.allclose(xs[p], x_ref[p]) and torch.allclose(ys[p], expected, atol=1e-5)
    big = prompts("relu_net", num=500, n=40, d=5, depth=4, hidden=16)[1]
    assert big.mean().abs() < 0.05 and big.var().item() == pytest.approx(1.0, abs=0.1)


def test_datamodule_is_seeded_and_draws_fresh_training_prompts():
    a, b = ICLTaskDataModule(n_dims=3, n_points=5, num_val=8, num_test=8), ICLTaskDataModule(n_dims=3, n_points=5,
                                                                                             num_val=8, num_test=8)
    a.setup(), b.setup()
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], a.test_set.tensors[0])
    first, again = a.train_set.__getitems__([3, 1, 2]), b.train_set.__getitems__([3, 1, 2])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], a.train_set.__getitems__([4, 5, 6])[0])
    a.set_curriculum(2, 3)
    xs, ys, var = a.train_set.__getitems__([0, 1])
    assert xs.shape == (2, 3, 3) and torch.all(xs[..., 2] == 0) and ys.shape == (2, 3) and var.shape == (2,)
    with pytest.raises(ConfigError, match="n_points=5"):
        a.set_curriculum(2, 6)
    with pytest.raises(ConfigError, match="task must be one of"):
        ICLTaskDataModule(task="quadratic")


# -- baselines against loops ---------------------------------------------------------------------
def test_least_squares_is_exact_once_n_reaches_d_and_ridge_matches_numpy():
    d = 4
    xs, ys, _ = prompts("linear", num=8, n=10, d=d)
    xs, ys = xs.double(), ys.double()
    errors = (least_squares(xs, ys) - ys) ** 2
    assert errors[:, d:].max() < 1e-10 and errors[:, 1:d].mean() > 1e-3
    ridge = least_squares(xs, ys, ridge=0.5)
    for p in range(3):
        for i in range(1, 10):
            x, y = xs[p, :i].numpy(), ys[p, :i].numpy()
            w = np.linalg.solve(x.T @ x + 0.5 * np.eye(d), x.T @ y)
            assert ridge[p, i].item() == pytest.approx(float(xs[p, i].numpy() @ w), abs=1e-10)


def test_averaging_and_knn_match_loops():
    xs, ys, _ = prompts("relu_net", num=5, n=9, d=3)
    xs, ys = xs.double(), ys.double()
    avg, near = averaging(xs, ys), knn(xs, ys, k=3)
    for p in range(5):
        assert avg[p, 0] == 0 and near[p, 0] == 0
        for i in range(1, 9):
            w = sum(ys[p, j] * xs[p, j] for j in range(i)) / i
            assert avg[p, i].item() == pytest.approx(float(w @ xs[p, i]), abs=1e-12)
            dist = sorted((float((xs[p, j] - xs[p, i]).norm()), j) for j in range(i))[:3]
            assert near[p, i].item() == pytest.approx(sum(float(ys[p, j]) for _, j in dist) / len(dist), abs=1e-12)


def test_direct_training_lowers_the_in_context_training_loss():
    xs, ys, _ = prompts("relu_net", num=32, n=12, d=3, depth=3, hidden=16)
    preds, losses = direct_training(xs, ys, [4, 11], depth=3, hidden=16, steps=60, lr=1e-2, return_losses=True)
    assert preds.shape == (32, 2) and losses.shape == (2, 61, 32)
    assert torch.all(losses[:, -1].mean(-1) < 0.3 * losses[:, 0].mean(-1))
    single, single_losses = direct_training(xs[5:6], ys[5:6], [11], depth=3, hidden=16, steps=60, lr=1e-2,
                                            return_losses=True)
    assert single_losses[0, -1, 0].item() < single_losses[0, 0, 0].item()  # every prompt trains on its own data


# -- backbones -----------------------------------------------------------------------------------
def test_interleaved_and_encoder_tokens():
    xs, ys = torch.randn(2, 3, 4), torch.randn(2, 3)
    tokens = interleave(xs, ys)
    assert tokens.shape == (2, 6, 5)
    for i in range(3):
        assert torch.equal(tokens[:, 2 * i, :4], xs[:, i]) and torch.all(tokens[:, 2 * i, 4] == 0)
        assert torch.all(tokens[:, 2 * i + 1, :4] == 0) and torch.equal(tokens[:, 2 * i + 1, 4], ys[:, i])
    enc = encoder_tokens(xs, ys, torch.tensor([0, 2]))
    assert enc.shape == (2, 2, 3, 6)
    for p, i in enumerate([0, 2]):
        for j in range(3):
            assert torch.equal(enc[:, p, j, :4], xs[:, j])
            assert torch.equal(enc[:, p, j, 4], torch.zeros(2) if j == i else ys[:, j])
            assert torch.all(enc[:, p, j, 5] == (1.0 if j == i else 0.0))


@pytest.mark.parametrize("kind", ["relu", "linear", "softmax"])
def test_attention_matches_a_naive_loop_in_float64(kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 3, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[..., 0] = True
    out = attend(q, k, v, kind, mask)
    for b in range(2):
        for h in range(2):
            for i in range(5):
                keys = [j for j in range(5) if mask[b, 0, i, j]]
                s = [float(q[b, h, i] @ k[b, h, j]) for j in keys]
                if kind == "relu":
                    w = [max(x, 0.0) / len(keys) for x in s]
                elif kind == "linear":
                    w = [x / len(keys) for x in s]
                else:
                    e = [math.exp(x / math.sqrt(3)) for x in s]
                    w = [x / sum(e) for x in e]
                expected = sum(wj * v[b, h, j] for wj, j in zip(w, keys))
                assert torch.allclose(out[b, h, i], expected, atol=1e-12)


@pytest.mark.parametrize("backbone,attention", [("gpt2", "softmax"), ("gpt2", "relu"), ("encoder", "relu"),
                                                ("encoder", "softmax")])
def test_prediction_at_i_ignores_later_examples_and_its_own_label(backbone, attention):
    torch.manual_seed(0)
    net = ICLTransformer(3, 8, width=16, depth=2, heads=2, backbone=backbone, attention=attention).double()
    xs, ys = torch.randn(2, 8, 3, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    base = net(xs, ys)
    xs2, ys2 = xs.clone(), ys.clone()
    xs2[:, 5:], ys2[:, 4:] = torch.randn(2, 3, 3), torch.randn(2, 4)  # y_4 is the query's own label at i = 4
    changed = net(xs2, ys2)
    assert torch.allclose(base[:, :5], changed[:, :5], atol=1e-12)
    assert not torch.allclose(base[:, 5:], changed[:, 5:])
    if backbone == "encoder":
        some = torch.tensor([1, 4, 6])
        assert torch.allclose(net(xs, ys, some), base[:, some], atol=1e-12)


def test_encoder_attends_both_ways_within_a_prefix():
    """The query at i sees every earlier example, and example 0's token sees example 1's (the
    encoder is bidirectional): with 2 layers, changing y_1 changes the prediction at i = 2."""
    torch.manual_seed(0)
    net = ICLTransformer(2, 4, width=16, depth=2, heads=2, backbone="encoder", attention="relu").double()
    xs, ys = torch.randn(1, 4, 2, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    ys2 = ys.clone()
    ys2[0, 1] += 1
    assert not torch.allclose(net(xs, ys)[:, 2], net(xs, ys2)[:, 2])


# -- the explicit construction -------------------------------------------------------------------
def test_hand_set_linear_attention_is_one_gd_step():
    """von Oswald et al.: the layer's query output equals w_1^T x_q with w_1 = -eta grad L(0),
    L(w) = 1/(2N) sum_j (w^T x_j - y_j)^2, the gradient written out as a loop."""
    d, n, eta = 4, 9, 0.37
    layer = LinearSelfAttention.gd_step(d, eta)
    xs, ys, _ = prompts("noisy_linear", num=20, n=n, d=d)
    xs, ys = xs.double(), ys.double()
    out = layer(xs, ys)
    for p in range(20):
        for i in range(1, n):
            grad = sum((torch.zeros(d, dtype=torch.float64) @ xs[p, j] - ys[p, j]) * xs[p, j] for j in range(i)) / i
            w1 = -eta * grad
            assert out[p, i].item() == pytest.approx(float(w1 @ xs[p, i]), abs=1e-6)
    assert torch.allclose(out, gd_prediction(xs, ys, eta), atol=1e-12)


def test_trained_linear_attention_predicts_like_gd():
    """A one-layer linear-attention model trained on linear regression (10 examples, the query
    last) makes GD's predictions: cosine similarity > 0.99, and its step size (least-squares fit of
    its predictions to GD's at eta = 1) is the best one-step size for isotropic inputs,
    eta* = N / (N + d + 1) (E[S^2] = (1 + (d + 1) / N) I for S = (1/N) sum_j x_j x_j^T)."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("icl_curves", ROOT / "benchmarks" / "icl" / "curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)  # the benchmark's own training and comparison, at d = 2
    d, n = 2, 11
    result = curves.linear_attention_vs_gd(d=d, n=n, steps=300, seed=0)
    assert result["cosine"] > 0.99
    assert result["best_eta"] == pytest.approx((n - 1) / (n - 1 + d + 1), abs=0.1)


# -- the module ----------------------------------------------------------------------------------
def test_bad_prompts_raise_one_line_shape_errors():
    model = InContextRegression(n_dims=3, n_positions=6, width=16, depth=1)
    with pytest.raises(ShapeError, match="7 examples exceeds the model's context n_positions=6"):
        model(torch.randn(2, 7, 3), torch.randn(2, 7))
    with pytest.raises(ShapeError, match=r"xs must have shape \[\*, \*, 3\], got \[2, 5, 4\].*n_dims=3"):
        model(torch.randn(2, 5, 4), torch.randn(2, 5))
    with pytest.raises(ShapeError, match="ys must have shape"):
        model(torch.randn(2, 5, 3), torch.randn(2, 4))
    with pytest.raises(ConfigError, match="backbone must be one of"):
        InContextRegression(backbone="lstm")


def test_cli_reports_a_dimension_mismatch_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/icl/linear_d5.yaml", "--data.n_dims=4", "--trainer.fast_dev_run=1",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: InContextRegression: xs must have shape [*, *, 5], got [64, 7, 4]")
    assert err[0].endswith("(the model's n_dims=5)")


def test_curriculum_stages_and_reaches_the_datamodule():
    curriculum = Curriculum(dims_start=2, dims_step=1, points_start=5, points_step=2, interval=10)
    assert curriculum.stage(0, 4, 11) == (2, 5)
    assert curriculum.stage(19, 4, 11) == (3, 7)
    assert curriculum.stage(10_000, 4, 11) == (4, 11)
    datamodule = ICLTaskDataModule(n_dims=4, n_points=11)
    trainer = SimpleNamespace(datamodule=datamodule, global_step=25)
    curriculum.on_train_batch_end(trainer, None, None, None, 0)
    assert (datamodule.dims, datamodule.points) == (4, 9)
    datamodule.setup()
    xs, _, _ = datamodule.train_set.__getitems__([0, 1, 2])
    assert xs.shape == (3, 9, 4) and torch.all(xs[..., :4] != 0)
    trainer.global_step = 5
    curriculum.on_train_batch_end(trainer, None, None, None, 0)
    xs, _, _ = datamodule.train_set.__getitems__([0, 1, 2])
    assert xs.shape == (3, 5, 4) and torch.all(xs[..., 2:] == 0)


def test_tiny_transformer_learns_d2_linear_regression_through_the_cli(tmp_path):
    """300 steps (curriculum on) through ``python -m zoo fit``: well below the zero baseline."""
    curriculum = tmp_path / "curriculum.yaml"
    curriculum.write_text("trainer:\n  callbacks:\n    - class_path: zoo.icl.module.Curriculum\n      init_args:\n"
                          "        dims_start: 1\n        points_start: 4\n        interval: 50\n")
    cli = run_cli("fit", "--config", "configs/icl/linear_d5.yaml", "--config", str(curriculum),
                  f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                  "--trainer.max_epochs=1", "--trainer.log_every_n_steps=20",
                  "--data.n_dims=2", "--model.n_dims=2", "--data.n_points=8", "--model.n_positions=8",
                  "--data.num_train=19200", "--data.num_val=256", "--data.num_test=512",
                  "--model.width=32", "--model.depth=2", "--model.report_at=[1,2]", "--model.lr=0.003")
    assert cli.trainer.global_step == 300
    assert cli.datamodule.dims == 2 and cli.datamodule.points == 8  # the curriculum ran to the end
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert results["test/model/nmse@7"] < 0.5 * results["test/zero/nmse@7"]
    assert results["test/zero/nmse@7"] == pytest.approx(1.0, abs=0.15)
    assert results["test/least_squares/nmse@7"] < 1e-6
    rows = list(csv.DictReader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    assert any(r.get("val/nmse") for r in rows)
