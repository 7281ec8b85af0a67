"""Forecasting baselines (issue 23): the moving average and the closed-form least-squares fit
against slow fp64 references, the naive forecasts on a hand-made series, fit + test through the
real CLI, one-line errors for bad input, and the least-squares Linear on the real ETTh1."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SHARED_DATA, run_cli
from tests.data_modules.test_data_modules import write_ett
from zoo.core.cli import main
from zoo.core.errors import ConfigError, ShapeError
from zoo.ndlinear import LinearForecaster, RepeatLast, SeasonalNaive
from zoo.ndlinear.baselines import moving_average, trend_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def slow_moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """DLinear's trend step by step: the mean of ``kernel`` values centred on ``i``, indices
    outside the window clamped to its first / last step (replicate padding)."""
    batch, length, channels = x.shape
    half = (kernel - 1) // 2
    out = torch.zeros_like(x)
    for i in range(length):
        for j in range(i - half, i + half + 1):
            out[:, i] += x[:, min(max(j, 0), length - 1)]
    return out / kernel


@pytest.mark.parametrize("length, kernel", [(12, 1), (12, 3), (12, 5), (10, 25), (96, 25)])
def test_moving_average_matches_a_slow_loop(length, kernel):
    x = torch.randn(3, length, 2, dtype=torch.float64)
    expected = slow_moving_average(x, kernel)
    torch.testing.assert_close(moving_average(x, kernel), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.einsum("ml,blc->bmc", trend_matrix(length, kernel), x), expected,
                               rtol=0, atol=1e-12)


def random_windows(n=300, lookback=12, horizon=5, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, lookback, channels, generator=generator, dtype=torch.float64)
    y = torch.randn(n, horizon, channels, generator=generator, dtype=torch.float64) + x[:, -horizon:] * 0.5 + 0.3
    return x, y


def reference_fit(x, y, decomposition, individual, kernel, ridge):
    """``torch.linalg.lstsq`` on the explicit design matrix ``[x, 1]`` (or ``[s, t, 1]``), the
    ridge as extra rows ``sqrt(ridge) I`` (bias unpenalized); minimum norm (gelsd)."""
    if decomposition:
        trend = slow_moving_average(x, kernel)
        x = torch.cat([x - trend, trend], dim=1)
    z = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [N, F+1, C]
    groups = [[c] for c in range(x.shape[2])] if individual else [list(range(x.shape[2]))]
    thetas = []
    for group in groups:
        design = z[:, :, group].permute(0, 2, 1).reshape(-1, z.shape[1])
        target = y[:, :, group].permute(0, 2, 1).reshape(-1, y.shape[1])
        if ridge:
            rows = (ridge ** 0.5) * torch.eye(z.shape[1], dtype=torch.float64)[:-1]
            design = torch.cat([design, rows])
            target = torch.cat([target, torch.zeros(len(rows), y.shape[1], dtype=torch.float64)])
        thetas.append(torch.linalg.lstsq(design, target, driver="gelsd").solution)
    theta = torch.stack(thetas)  # [G, F+1, H]
    return theta[:, :-1].transpose(1, 2), theta[:, -1]


@pytest.mark.parametrize("decomposition", [False, True])
@pytest.mark.parametrize("individual", [False, True])
@pytest.mark.parametrize("ridge", [0.0, 3.0])
def test_least_squares_fit_equals_torch_lstsq(decomposition, individual, ridge):
    x, y = random_windows()
    model = LinearForecaster(lookback=12, horizon=5, channels=3, decomposition=decomposition, kernel=5,
                             individual=individual, ridge=ridge).double()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    fitted = model.solve(batches)
    weight, bias = fitted["weight"], fitted["bias"]
    expected_weight, expected_bias = reference_fit(x, y, decomposition, individual, 5, ridge)
    assert weight.shape == model.weight.shape and bias.shape == model.bias.shape
    torch.testing.assert_close(weight, expected_weight, rtol=0, atol=1e-9)
    torch.testing.assert_close(bias, expected_bias, rtol=0, atol=1e-9)


def test_dlinear_least_squares_forecasts_what_linear_forecasts():
    """Without ridge the decomposition adds nothing a linear map of x lacks: same forecasts."""
    x, y = random_windows(lookback=24, horizon=6)
    forecasts = []
    for decomposition in (False, True):
        model = LinearForecaster(lookback=24, horizon=6, channels=3, decomposition=decomposition, kernel=7).double()
        with torch.no_grad():
            load(model, model.solve([(x, y)]))
            forecasts.append(model(x))
    torch.testing.assert_close(forecasts[0], forecasts[1], rtol=0, atol=1e-9)


def load(model, fitted):
    with torch.no_grad():
        for name, value in fitted.items():
            model.get_parameter(name).copy_(value)


def test_revin_least_squares_equals_lstsq_on_mean_removed_windows():
    """RevIN (mean only) keeps the map linear: its fit is the plain fit of the mean-removed windows,
    and the forecast adds the mean back."""
    x, y = random_windows()
    model = LinearForecaster(lookback=12, horizon=5, channels=3, revin=True).double()
    fitted = model.solve([(x, y)])
    level = x.mean(dim=1, keepdim=True)
    weight, bias = reference_fit(x - level, y - level, False, False, 5, 0.0)
    torch.testing.assert_close(fitted["weight"], weight, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(fitted["bias"], bias, rtol=1e-7, atol=1e-9)
    load(model, fitted)
    expected = torch.einsum("blc,hl->bhc", x - level, weight[0]) + bias[0][:, None] + level
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def slow_ndlinear_forecast(x, A, bA, B, bB, period):
    """``y[d, h] = sum_{e,k} A[d, e] x[e*p + k] B[h, k] + bA[d] sum_k B[h, k] + bB[h]`` per window
    and variable, by loops."""
    n, length, channels = x.shape
    out_days = A.shape[0]
    y = torch.zeros(n, out_days * period, channels, dtype=x.dtype)
    for d in range(out_days):
        for h in range(period):
            value = bA[d] * B[h].sum() + bB[h]
            for e in range(length // period):
                for k in range(period):
                    value = value + A[d, e] * x[:, e * period + k] * B[h, k]
            y[:, d * period + h] = value
    return y


def reference_als(x, y, period, rounds, ridge=0.0):
    """Alternating least squares on explicit design matrices (torch.linalg.lstsq, ridge as extra
    rows): with B fixed, rows (window, variable, hour k) with features [(Z B^T)[:, k]; sum_j B[k, j]]
    predict y[:, k] - bB[k] for every output day; with A fixed, rows (window, variable, day)
    with features [E[d, :], 1] predict that day's hours."""
    z = x.transpose(1, 2).reshape(-1, x.shape[1] // period, period)  # [N, days, p]
    t = y.transpose(1, 2).reshape(-1, y.shape[1] // period, period)  # [N, out_days, p]
    z1 = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)
    B, bB = torch.eye(period, dtype=x.dtype), torch.zeros(period, dtype=x.dtype)

    def lstsq(design, target, size):
        if ridge:
            rows = ridge ** 0.5 * torch.eye(size, dtype=x.dtype)[:-1]
            design, target = torch.cat([design, rows]), torch.cat([target, torch.zeros(len(rows), target.shape[1])])
        return torch.linalg.lstsq(design, target, driver="gelsd").solution

    for _ in range(rounds):
        features = (z1 @ B.T).transpose(1, 2).reshape(-1, z1.shape[1])  # rows (n, hour)
        target = (t - bB).transpose(1, 2).reshape(-1, t.shape[1])
        day = lstsq(features, target, z1.shape[1]).T  # [out_days, days + 1]
        e = day @ z1
        design = torch.cat([e, torch.ones_like(e[..., :1])], dim=-1).reshape(-1, period + 1)
        theta = lstsq(design, t.reshape(-1, period), period + 1)
        B, bB = theta[:-1].T, theta[-1]
    return day[:, :-1], day[:, -1], B, bB


@pytest.mark.parametrize("rounds, ridge", [(1, 0.0), (3, 0.0), (2, 5.0)])
def test_ndlinear_alternating_least_squares_equals_explicit_designs(rounds, ridge):
    period, lookback, horizon = 4, 12, 8
    x, y = random_windows(n=200, lookback=lookback, horizon=horizon)
    model = LinearForecaster(lookback=lookback, horizon=horizon, channels=3, layer="ndlinear", period=period,
                             iterations=rounds, ridge=ridge).double()
    fitted = model.solve([(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)])
    A, bA, B, bB = reference_als(x, y, period, rounds, ridge)
    for name, expected in zip(("map.weights.0", "map.biases.0", "map.weights.1", "map.biases.1"), (A, bA, B, bB)):
        torch.testing.assert_close(fitted[name], expected, rtol=1e-7, atol=1e-9, msg=name)
    load(model, fitted)
    torch.testing.assert_close(model(x), slow_ndlinear_forecast(x, A, bA, B, bB, period), rtol=1e-9, atol=1e-9)


def test_ndlinear_rounds_never_raise_the_training_error():
    x, y = random_windows(n=300, lookback=12, horizon=8)
    errors = []
    for rounds in (1, 2, 4, 8):
        model = LinearForecaster(lookback=12, horizon=8, channels=3, layer="ndlinear", period=4,
                                 iterations=rounds, revin=True).double()
        load(model, model.solve([(x, y)]))
        errors.append(torch.nn.functional.mse_loss(model(x), y).item())
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors


def test_naive_forecasts_on_a_hand_made_series():
    x = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0]]])  # [1, 5, 2]
    last = RepeatLast(lookback=5, horizon=4, channels=2)(x)
    assert last[0].tolist() == [[5.0, 50.0]] * 4
    seasonal = SeasonalNaive(lookback=5, horizon=7, channels=2, period=3)(x)
    assert seasonal[0, :, 0].tolist() == [3.0, 4.0, 5.0, 3.0, 4.0, 5.0, 3.0]
    assert seasonal[0, :, 1].tolist() == [30.0, 40.0, 50.0, 30.0, 40.0, 50.0, 30.0]
    assert SeasonalNaive(lookback=5, horizon=2, channels=2, period=5)(x)[0, :, 0].tolist() == [1.0, 2.0]


def test_parameter_counts_and_shape_errors():
    L, H, C = 96, 24, 7
    assert LinearForecaster(L, H, C).parameter_counts()["params/total"] == H * L + H
    assert LinearForecaster(L, H, C, individual=True).parameter_counts()["params/total"] == C * (H * L + H)
    assert LinearForecaster(L, H, C, decomposition=True).parameter_counts()["params/total"] == 2 * H * L + H
    assert RepeatLast(L, H, C).parameter_counts()["params/total"] == 0
    nd = LinearForecaster(L, H, C, layer="ndlinear", period=24).parameter_counts()["params/total"]
    assert nd == (H // 24) * (L // 24) + H // 24 + 24 * 24 + 24
    with pytest.raises(ShapeError, match=r"input window must have shape \[\*, 96, 7\], got \[2, 48, 7\]"):
        LinearForecaster(L, H, C)(torch.randn(2, 48, 7))


@pytest.mark.parametrize("make, match", [
    (lambda: SeasonalNaive(lookback=48, period=96), "period must be between 1 and lookback=48, got 96"),
    (lambda: LinearForecaster(kernel=24), "kernel must be an odd number >= 1, got 24"),
    (lambda: LinearForecaster(kernel=0), "kernel must be an odd number >= 1, got 0"),
    (lambda: LinearForecaster(solver="adam"), "solver must be one of .*got 'adam'"),
    (lambda: LinearForecaster(ridge=-1.0), "ridge must be >= 0, got -1.0"),
    (lambda: LinearForecaster(layer="conv"), "layer must be one of .*got 'conv'"),
    (lambda: LinearForecaster(lookback=100, layer="ndlinear"),
     "lookback=100 and horizon=96 must be multiples of period=24"),
    (lambda: LinearForecaster(layer="ndlinear", individual=True), "set individual: false"),
    (lambda: LinearForecaster(layer="ndlinear", iterations=0), "iterations must be >= 1, got 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def cli_args(folder, model: str, *extra: str, lookback: int = 48, horizon: int = 12) -> list[str]:
    return [
        f"--model={model}", f"--model.lookback={lookback}", f"--model.horizon={horizon}", "--model.channels=4",
        "--data=TimeSeriesDataModule", f"--data.data_dir={folder}", "--data.file=ett.csv", "--data.lookback=48",
        "--data.horizon=12", f"--trainer.default_root_dir={folder / model}", *QUIET, *extra,
    ]


def test_fit_and_test_through_the_cli_least_squares_beats_repeat_last(tmp_path):
    """write_ett's variables are sinusoids plus linear trends, which a linear map of the look-back
    extrapolates (a linear recurrence) and repeating the last value does not."""
    write_ett(tmp_path / "ett.csv", rows=600, columns=4)
    naive = run_cli("test", *cli_args(tmp_path, "RepeatLast"))  # no checkpoint: nothing to fit
    naive_mse = naive.trainer.callback_metrics["test/mse"].item()
    fitted = run_cli("fit", *cli_args(tmp_path, "LinearForecaster", "--model.individual=true",
                                      "--trainer.max_epochs=5"))
    assert fitted.trainer.current_epoch == 1, "the closed-form fit stops after its one logging epoch"
    result = fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, verbose=False)[0]
    assert result["test/mse"] < 0.1 * naive_mse, (result, naive_mse)
    sgd = run_cli("fit", *cli_args(tmp_path, "LinearForecaster", "--model.solver=sgd", "--model.decomposition=true",
                                   "--model.lr=0.01", "--trainer.max_epochs=2"))
    assert sgd.trainer.global_step == 2 * sgd.trainer.num_training_batches
    sgd_mse = sgd.trainer.test(sgd.model, datamodule=sgd.datamodule, verbose=False)[0]["test/mse"]
    assert sgd_mse < naive_mse, (sgd_mse, naive_mse)
    run_cli("predict", *cli_args(tmp_path, "SeasonalNaive", "--model.period=24"))
    assert list((tmp_path / "SeasonalNaive").glob("version_*/forecasts.png"))


def test_ndlinear_linear_through_the_cli_beats_repeat_last(tmp_path):
    write_ett(tmp_path / "ett.csv", rows=600, columns=4)
    naive = run_cli("test", *cli_args(tmp_path, "RepeatLast")).trainer.callback_metrics["test/mse"].item()
    fitted = run_cli("fit", *cli_args(tmp_path, "LinearForecaster", "--model.layer=ndlinear", "--model.period=12",
                                      "--model.iterations=3", "--model.revin=true"))
    assert fitted.model.map.weights[0].shape == (1, 4) and fitted.model.map.weights[1].shape == (12, 12)
    result = fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, verbose=False)[0]
    assert result["test/mse"] < 0.5 * naive, (result, naive)


@pytest.mark.parametrize("extra, message", [
    (["--model=LinearForecaster", "--model.horizon=24"], "horizon=24 but the data's horizon is 12"),
    (["--model=RepeatLast", "--model.lookback=96"], "lookback=96 but the data's lookback is 48"),
    (["--model=LinearForecaster", "--model.channels=7"], "channels=7 but the data has 4 variables"),
    (["--model=SeasonalNaive", "--model.period=49"], "period must be between 1 and lookback=48, got 49"),
    (["--model=LinearForecaster", "--model.kernel=4"], "kernel must be an odd number >= 1, got 4"),
    (["--model=LinearForecaster", "--model.solver=newton"], "solver must be one of"),
    (["--model=LinearForecaster", "--model.layer=ndlinear"], "lookback=48 and horizon=12 must be multiples of "
                                                             "period=24"),
])
def test_bad_input_ends_in_one_line(tmp_path, capsys, extra, message):
    write_ett(tmp_path / "ett.csv", rows=200, columns=4)
    model, *extra = extra
    args = [model, "--model.lookback=48", "--model.horizon=12", "--model.channels=4", "--data=TimeSeriesDataModule",
            f"--data.data_dir={tmp_path}", "--data.file=ett.csv", "--data.lookback=48", "--data.horizon=12",
            f"--trainer.default_root_dir={tmp_path}", *QUIET]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, *extra])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.skipif(not (SHARED_DATA / "timeseries" / "ETTh1.csv").is_file(),
                    reason=f"needs {SHARED_DATA}/timeseries/ETTh1.csv (../shared/data is absent)")
def test_least_squares_linear_on_etth1_horizon_96(tmp_path):
    """Measured 0.381 (docs/ndlinear.md); the zoo's best Forecaster reaches 0.556 ± 0.093 here."""
    cli = run_cli("fit", "--config", "configs/ndlinear/etth1_linear_h96.yaml",
                  f"--trainer.default_root_dir={tmp_path}", *QUIET)
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert result["test/mse"] < 0.40, result


@pytest.mark.skipif(not (SHARED_DATA / "timeseries" / "ETTh1.csv").is_file(),
                    reason=f"needs {SHARED_DATA}/timeseries/ETTh1.csv (../shared/data is absent)")
@pytest.mark.slow  # ~15 s alone (20 passes over the 8.3 K training windows at look-back 336)
def test_ndlinear_linear_on_etth1_beats_the_least_squares_linear(tmp_path):
    """Look-back 336, horizon 96, both fitted in closed form: measured 0.365 vs 0.370 (docs/ndlinear.md),
    with 1.1 K parameters instead of 32 K."""
    mse = {}
    for layer in ("dense", "ndlinear"):
        cli = run_cli("fit", "--config", "configs/ndlinear/etth1_ndlinear_linear_h96.yaml", f"--model.layer={layer}",
                      "--model.revin=false" if layer == "dense" else "--model.revin=true",
                      f"--trainer.default_root_dir={tmp_path / layer}", *QUIET)
        mse[layer] = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/mse"]
    assert mse["ndlinear"] < mse["dense"] < 0.38, mse
