"""The forecasting baselines a practitioner tries first (issue 23), on the same windows as
``forecaster.Forecaster``: look-back ``x: [B, L, C]`` -> forecast ``[B, H, C]``, every variable
forecast from its own past only (channel-independent, as DLinear, Zeng et al. 2023).

- ``RepeatLast``: ``y[t] = x[L-1]`` for every horizon step (the random-walk forecast).
- ``SeasonalNaive``: ``y[t] = x[L - p + (t mod p)]``, the last period ``p`` repeated.
- ``LinearForecaster``: DLinear's "Linear", one map ``y = W x + b`` from the look-back to the
  horizon per variable (``individual``) or shared by all; with ``decomposition``, DLinear:
  ``x = s + t`` with the trend ``t`` a moving average of ``x`` (kernel ``k``, the ends
  replicate-padded by ``(k-1)/2``) and ``y = W_s s + W_t t + b``.

``solver="lstsq"`` fits the linear maps in closed form: the model is linear in its features
``z = [x, 1]`` (DLinear: ``z = [s, t, 1] = K [x, 1]``, the decomposition being linear in ``x``),
so the training split's normal equations ``(Z^T Z + ridge D) theta = Z^T Y`` (``D`` leaves the
bias unpenalized) are summed over the train dataloader in float64 and solved once at the start
of ``fit``; the epoch that follows only logs the training error, and fit stops after it. Without
ridge, DLinear's features are rank deficient (``s + t = x``): the fit is the minimum-norm solution
``theta_z = (K^T)^+ theta_x``, and DLinear-lstsq forecasts exactly what Linear-lstsq forecasts.
``solver="sgd"`` trains with AdamW (cosine schedule) on the MSE, as DLinear does.

NdLinear in place of the linear map (``layer="ndlinear"``, the paper's layer inside DLinear's
backbone): the look-back is viewed as a ``[L/p, p]`` tensor (days x hours for ``period`` ``p =
24``) and the horizon as ``[H/p, p]``, and one ``NdLinear((F/p, p), (H/p, p))`` maps the first to
the second, shared by the variables: ``Y = A Z B^T + B_eff`` with a day map ``A`` and an hour map
``B`` (``(H/p)(F/p) + p^2`` weights instead of ``H F``). Its least-squares fit is alternating least
squares: with ``B`` fixed the model is linear in ``[A, b_A]``, with ``A`` fixed linear in ``[B, b_B]``;
each half-step solves its normal equations exactly (fp64), so the training error never rises.
``iterations`` such rounds start from ``B = I`` (the hour map the identity).

``revin`` (reversible instance normalization, Kim et al. 2022, without the affine part): each
window's per-variable mean over the look-back is subtracted from the input and added to the
forecast. For a linear map, RevIN's division by the window's standard deviation cancels except on
the bias, so this mean-only form is the part that matters, and it keeps the model linear in its
weights: the least-squares fit stays exact.

All report MSE and MAE on the scaled series (``test/mse``, ``test/mae``); ``predict`` draws
``forecasts.png``. The naive forecasts have no weights: ``test`` needs no checkpoint, and ``fit``
runs one epoch that only logs their training error.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule
from zoo.ndlinear.forecaster import WindowForecast
from zoo.ndlinear.layer import NdLinear

SOLVERS = ("lstsq", "sgd")
LAYERS = ("dense", "ndlinear")


def moving_average(x: Tensor, kernel: int) -> Tensor:
    """DLinear's trend of ``x: [B, L, C]``: the mean over ``kernel`` steps centred on each step,
    the series extended at both ends by repeating its first and last value ``(kernel-1)/2`` times."""
    pad = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return F.avg_pool1d(padded.transpose(1, 2), kernel, stride=1).transpose(1, 2)


def trend_matrix(lookback: int, kernel: int, dtype=torch.float64) -> Tensor:
    """The moving average as a matrix ``T: [L, L]`` with ``trend = T @ x`` (per variable)."""
    return moving_average(torch.eye(lookback, dtype=dtype)[None], kernel)[0]


class WindowForecaster(WindowForecast, ZooModule):
    """What the baselines share: shape checks against the DataModule, metrics and the plot."""

    name = "forecaster"

    def __init__(self, lookback: int, horizon: int, channels: int) -> None:
        super().__init__()
        for key, value in (("lookback", lookback), ("horizon", horizon), ("channels", channels)):
            if value < 1:
                raise ConfigError(f"{type(self).__name__}: {key} must be >= 1, got {value}")
        self.init_metrics()

    def trains_by_gradient(self) -> bool:
        """Whether fit takes optimizer steps; otherwise it runs one epoch that only logs."""
        return False

    def setup(self, stage: str) -> None:
        """Compare the windows with the DataModule's before any step (one line, naming both)."""
        if stage == "fit" and not self.trains_by_gradient():  # no optimizer, no loss: on purpose
            for hook in ("LightningModule.configure_optimizers", "training_step"):
                warnings.filterwarnings("ignore", message=f"`{hook}` returned `None`")
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        hp, cls = self.hparams, type(self).__name__
        for key in ("lookback", "horizon"):
            if data is not None and getattr(data, key, hp[key]) != hp[key]:
                raise ConfigError(f"{cls}: model.init_args.{key}={hp[key]} but the data's {key} is "
                                  f"{getattr(data, key)}; set both to the same value")
        names = (getattr(data, "input_names", None), getattr(data, "target_names", None))
        if data is not None and names[0] and names[1]:
            if names[0] != names[1]:
                raise ConfigError(f"{cls} forecasts every input variable from its own past: it needs data.features M "
                                  f"or S, got inputs {names[0]} and targets {names[1]}")
            if len(names[0]) != hp.channels:
                raise ConfigError(f"{cls}: model.init_args.channels={hp.channels} but the data has "
                                  f"{len(names[0])} variables {names[0]}")

    def check_window(self, x: Tensor) -> None:
        hp = self.hparams
        self.check_shape("input window", x, (None, hp.lookback, hp.channels),
                         " (set model.init_args.lookback / channels to match the data)")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        """The MSE as the loss, or, with nothing to train, only logged (no loss, no step)."""
        x, y = batch
        if self.trains_by_gradient():
            loss = F.mse_loss(self(x), y)
            self.log_train(batch_idx, mse=loss)
            return loss
        with torch.no_grad():
            self.log_train(batch_idx, mse=F.mse_loss(self(x), y))
        return None

    def configure_optimizers(self):
        return super().configure_optimizers() if self.trains_by_gradient() else None

    def on_train_epoch_end(self) -> None:
        if not self.trains_by_gradient():  # nothing changes in a further epoch
            self.trainer.should_stop = True

    def target_width(self) -> tuple[str, int]:
        return "channels", self.hparams.channels

    def plot_title(self) -> str:
        return f"{self.name}, horizon {self.hparams.horizon}"


class RepeatLast(WindowForecaster):
    """``y[t] = x[L-1]`` for every horizon step ``t`` (module docstring). No weights."""

    name = "repeat last"

    def __init__(self, lookback: int = 96, horizon: int = 96, channels: int = 7) -> None:
        super().__init__(lookback, horizon, channels)
        self.save_hyperparameters()

    def forward(self, x: Tensor) -> Tensor:
        self.check_window(x)
        return x[:, -1:].repeat(1, self.hparams.horizon, 1)


class SeasonalNaive(WindowForecaster):
    """``y[t] = x[L - period + (t mod period)]``: the last ``period`` steps, repeated. No weights."""

    def __init__(self, lookback: int = 96, horizon: int = 96, channels: int = 7, period: int = 24) -> None:
        super().__init__(lookback, horizon, channels)
        if not 1 <= period <= lookback:
            raise ConfigError(f"SeasonalNaive: period must be between 1 and lookback={lookback}, got {period}")
        self.save_hyperparameters()
        self.name = f"seasonal naive ({period})"
        self.register_buffer("steps", lookback - period + torch.arange(horizon) % period, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_window(x)
        return x[:, self.steps]


class LinearForecaster(WindowForecaster):
    """DLinear's "Linear" and, with ``decomposition``, DLinear; with ``layer="ndlinear"`` an
    NdLinear map in their place (module docstring).

    Args:
        lookback, horizon, channels: window lengths and the number of variables (the DataModule's).
        decomposition: split the look-back into moving-average trend and remainder, one map each.
        kernel: the moving average's length (odd; DLinear uses 25).
        individual: one map per variable; otherwise one map shared by all variables.
        solver: ``lstsq`` (closed form at the start of fit) or ``sgd`` (AdamW on the MSE).
        lr, weight_decay: AdamW, cosine to 0 over the run (``sgd`` only).
        ridge: L2 penalty on the weights (not the biases) of the ``lstsq`` fit, on the summed
            squared errors of all training windows (for NdLinear: of every half-step).
        layer: ``dense`` (one ``H x F`` matrix) or ``ndlinear`` (day map x hour map).
        period: the length of the second mode for ``ndlinear`` (24: hours of a day); lookback and
            horizon must be multiples of it.
        iterations: alternating least-squares rounds of the ``ndlinear`` ``lstsq`` fit.
        revin: subtract each window's per-variable look-back mean, add it back to the forecast.
    """

    def __init__(
        self,
        lookback: int = 96,
        horizon: int = 96,
        channels: int = 7,
        decomposition: bool = False,
        kernel: int = 25,
        individual: bool = False,
        solver: str = "lstsq",
        lr: float = 0.005,
        weight_decay: float = 0.0,
        ridge: float = 0.0,
        layer: str = "dense",
        period: int = 24,
        iterations: int = 10,
        revin: bool = False,
    ) -> None:
        super().__init__(lookback, horizon, channels)
        if solver not in SOLVERS:
            raise ConfigError(f"LinearForecaster: solver must be one of {SOLVERS}, got {solver!r}")
        if layer not in LAYERS:
            raise ConfigError(f"LinearForecaster: layer must be one of {LAYERS}, got {layer!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"LinearForecaster: kernel must be an odd number >= 1, got {kernel}")
        if not ridge >= 0:
            raise ConfigError(f"LinearForecaster: ridge must be >= 0, got {ridge}")
        if layer == "ndlinear":
            if period < 1 or lookback % period or horizon % period:
                raise ConfigError(f"LinearForecaster(layer='ndlinear'): lookback={lookback} and horizon={horizon} "
                                  f"must be multiples of period={period} (the second mode's length)")
            if individual:
                raise ConfigError("LinearForecaster(layer='ndlinear') shares one map between the variables; "
                                  "set individual: false")
            if iterations < 1:
                raise ConfigError(f"LinearForecaster: iterations must be >= 1, got {iterations}")
        self.save_hyperparameters()
        kind = "DLinear" if decomposition else "Linear"
        extras = [solver] + (["individual"] if individual else []) + (["RevIN"] if revin else [])
        self.name = (f"NdLinear-{kind}" if layer == "ndlinear" else kind) + f" ({', '.join(extras)})"
        features = lookback * (2 if decomposition else 1)
        if layer == "ndlinear":
            self.map = NdLinear((features // period, period), (horizon // period, period))
            with torch.no_grad():  # start as "the same hour of an earlier day": B = I
                self.map.weights[1].copy_(torch.eye(period))
        else:
            groups = channels if individual else 1
            self.weight = nn.Parameter(torch.full((groups, horizon, features), 1.0 / features))
            self.bias = nn.Parameter(torch.zeros(groups, horizon))

    def features(self, x: Tensor) -> Tensor:
        """``[B, L, C]`` -> the map's inputs: ``x``, or ``[s, t]`` stacked along time ``[B, 2L, C]``."""
        if not self.hparams.decomposition:
            return x
        trend = moving_average(x, self.hparams.kernel)
        return torch.cat([x - trend, trend], dim=1)

    def level(self, x: Tensor) -> Tensor | float:
        """What RevIN removes from the look-back and adds to the forecast: ``[B, 1, C]`` or 0."""
        return x.mean(dim=1, keepdim=True) if self.hparams.revin else 0.0

    def apply_map(self, z: Tensor) -> Tensor:
        """The linear map alone: features ``[B, F, C]`` -> ``[B, H, C]``."""
        hp = self.hparams
        if hp.layer == "ndlinear":
            batch, features, channels = z.shape
            grid = z.transpose(1, 2).reshape(batch, channels, features // hp.period, hp.period)
            return self.map(grid).reshape(batch, channels, hp.horizon).transpose(1, 2)
        weight, bias = self.weight.expand(hp.channels, -1, -1), self.bias.expand(hp.channels, -1)
        return torch.einsum("bfc,chf->bhc", z, weight) + bias.T

    def forward(self, x: Tensor) -> Tensor:
        self.check_window(x)
        level = self.level(x)
        return self.apply_map(self.features(x - level)) + level

    def trains_by_gradient(self) -> bool:
        return self.hparams.solver == "sgd"

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.solver != "lstsq":
            return
        data = getattr(self.trainer, "datamodule", None)
        if data is None:
            raise ConfigError("LinearForecaster(solver='lstsq') fits from the DataModule's train_dataloader(); "
                              "give a data section")
        fitted = self.solve(data.train_dataloader())
        fitted = self.trainer.strategy.broadcast(fitted, 0)  # the same fit on every rank
        with torch.no_grad():
            for name, value in fitted.items():
                self.get_parameter(name).copy_(value)

    def _windows(self, batches, lift: bool = True):
        """``(features, target)`` (or ``(x, target)`` without ``lift``) in float64 on the CPU,
        the RevIN level removed from both."""
        for x, y in batches:
            self.check_window(x)
            x, y = x.double().cpu(), y.double().cpu()
            level = self.level(x)
            yield self.features(x - level) if lift else x - level, y - level

    @torch.no_grad()
    def solve(self, batches) -> dict[str, Tensor]:
        """The least-squares parameters over ``batches`` of ``(x, y)`` (module docstring), in
        float64, returned by parameter name in the parameters' dtype. ``batches`` is iterated
        once (dense) or twice per round (NdLinear)."""
        if self.hparams.layer == "ndlinear":
            return self._solve_ndlinear(batches)
        hp = self.hparams
        size = hp.lookback + 1
        gram = torch.zeros(hp.channels, size, size, dtype=torch.float64)
        cross = torch.zeros(hp.channels, size, hp.horizon, dtype=torch.float64)
        for x, y in self._windows(batches, lift=False):  # DLinear: solved in x-space, lifted below
            z = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [B, L+1, C]
            gram += torch.einsum("bfc,bgc->cfg", z, z)
            cross += torch.einsum("bfc,bhc->cfh", z, y)
        if not hp.individual:
            gram, cross = gram.sum(0, keepdim=True), cross.sum(0, keepdim=True)
        if hp.decomposition:  # z = K [x, 1] with K = [[I - T], [T], [1]]
            trend = trend_matrix(hp.lookback, hp.kernel)
            lift = torch.zeros(2 * hp.lookback + 1, size, dtype=torch.float64)
            lift[: hp.lookback, : hp.lookback] = torch.eye(hp.lookback, dtype=torch.float64) - trend
            lift[hp.lookback: -1, : hp.lookback] = trend
            lift[-1, -1] = 1.0
            if hp.ridge == 0:  # minimum-norm solution on the rank-deficient [s, t, 1] features
                theta = torch.linalg.pinv(lift.T) @ _ridge_solve(gram, cross, 0.0)
            else:
                theta = _ridge_solve(lift @ gram @ lift.T, lift @ cross, hp.ridge)
        else:
            theta = _ridge_solve(gram, cross, hp.ridge)  # [G, F+1, H]
        return {"weight": theta[:, :-1].transpose(1, 2).to(self.weight), "bias": theta[:, -1].to(self.bias)}

    def _solve_ndlinear(self, batches) -> dict[str, Tensor]:
        """Alternating least squares for ``Y = A Z B^T + b_A (B 1)^T + 1 b_B^T`` (per window and
        variable, ``Z: [F/p, p]``, ``Y: [H/p, p]``): with ``Z~ = [Z; 1]`` and ``A~ = [A, b_A]``,

        - ``B`` fixed: ``A~ (sum Z~ B^T B Z~^T + ridge D) = sum (Y - 1 b_B^T) B Z~^T``;
        - ``A~`` fixed, ``E = A~ Z~``: every row ``e`` of ``E`` predicts the row ``y`` of ``Y`` as
          ``B e + b_B``, an ordinary least-squares problem in ``[B, b_B]`` over all rows.
        """
        hp = self.hparams
        days, period = (hp.lookback * (2 if hp.decomposition else 1)) // hp.period, hp.period
        out_days = hp.horizon // hp.period
        hour = torch.eye(period, dtype=torch.float64)
        hour_bias = torch.zeros(period, dtype=torch.float64)

        def grids():
            for z, y in self._windows(batches):
                z = z.transpose(1, 2).reshape(-1, days, period)
                z = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)  # [N, F/p + 1, p]
                yield z, y.transpose(1, 2).reshape(-1, out_days, period)

        for _ in range(hp.iterations):
            gram = torch.zeros(days + 1, days + 1, dtype=torch.float64)
            cross = torch.zeros(out_days, days + 1, dtype=torch.float64)
            metric = hour.T @ hour
            for z, y in grids():
                gram += torch.einsum("nkj,jl,nml->km", z, metric, z)
                cross += torch.einsum("nij,jl,nkl->ik", y - hour_bias, hour, z)
            day = _ridge_solve(gram, cross.T, hp.ridge).T  # [H/p, F/p + 1]: [A, b_A]
            gram = torch.zeros(period + 1, period + 1, dtype=torch.float64)
            cross = torch.zeros(period + 1, period, dtype=torch.float64)
            for z, y in grids():
                e = day @ z  # [N, H/p, p]
                e = torch.cat([e, torch.ones_like(e[..., :1])], dim=-1)
                gram += torch.einsum("nil,nim->lm", e, e)
                cross += torch.einsum("nil,nij->lj", e, y)
            theta = _ridge_solve(gram, cross, hp.ridge)  # [p + 1, p]: [B^T; b_B]
            hour, hour_bias = theta[:-1].T, theta[-1]
        dtype = self.map.weights[0].dtype
        return {"map.weights.0": day[:, :-1].to(dtype), "map.biases.0": day[:, -1].to(dtype),
                "map.weights.1": hour.to(dtype), "map.biases.1": hour_bias.to(dtype)}


def _ridge_solve(gram: Tensor, cross: Tensor, ridge: float) -> Tensor:
    """``(gram + ridge D)^-1 cross``, ``D`` the identity without its last (bias) entry; the
    minimum-norm solution when the system is singular (a constant variable, too few windows)."""
    penalty = torch.ones(gram.shape[-1], dtype=gram.dtype)
    penalty[-1] = 0.0
    return torch.linalg.lstsq(gram + ridge * torch.diag(penalty), cross, driver="gelsd").solution
