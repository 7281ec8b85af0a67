"""The paper's limit experiments as a LightningModule (``python -m zoo fit``): a soft prompt on the
frozen random one-layer, one-head transformer of :mod:`zoo.prompt_tuning.limits`, fit to the
sequence-to-sequence data of :mod:`data_modules.seq2seq` (random Lipschitz maps for universality,
random pairs for memorization).

With ``tau_P`` the frozen block read after the prompt ``P [m, d]`` (``limits`` module docstring),
the prediction and the loss are

    yhat(X) = tau_P(X) - c,      c = (1/N) sum_n tau_0(X_n)  over the N training inputs,
    L(P)    = mean over samples and entries of (yhat(X) - y)^2,

so the target of ``tau_P`` is ``y + c``, as ``benchmarks/prompt_tuning/limits.py`` builds it: the
prompt does not have to learn the block's mean output, which no target information is in. ``c``
(a buffer, ``[L, d]`` in the first rows of ``offset``) is computed once, before the first step, from the frozen block without a
prompt, and saved with the checkpoint.

Validation and test log, over the whole split (not batch means):

- ``relative_error = ||yhat - y||_F / ||y - mean(y)||_F`` (``limits.relative_error``: 1 is as good
  as the best constant output);
- ``worst_pair_error = max_n RMS(yhat_n - y_n)`` (``limits.worst_pair_error``: memorization to
  tolerance eps means ``<= eps``);
- ``mse``, the loss above.

Validation names them ``val/<metric>``; a second validation loader (the training inputs, as
``Seq2SeqDataModule`` gives for ``lipschitz``) logs ``val/train_<metric>``, the training error as the
script measures it. Test logs ``test/<metric>``.

Only the prompt trains (AdamW with no weight decay = Adam, under a per-step cosine schedule to 0:
the script's ``limits.fit``). The frozen block is rebuilt from ``seed`` in ``__init__``, so
checkpoints hold the prompt and ``c`` only; the prompt's init, ``N(0, init_scale^2)``, is drawn from
``seed`` too, and a fit of this module reproduces the script's run of the same seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError
from zoo.core.module import ZooModule
from zoo.prompt_tuning.limits import (
    ATTENTIONS,
    OneLayerTransformer,
    PromptedTransformer,
    relative_error,
    worst_pair_error,
)
from zoo.prompt_tuning.soft_prompt import PromptOnlyCheckpoint, check_num_virtual_tokens

#: State-dict prefix of the frozen block's weights, left out of checkpoints (rebuilt from ``seed``).
BASE_PREFIX = "model.model."
METRICS = ("relative_error", "worst_pair_error", "mse")


class PromptTuneOneLayer(PromptOnlyCheckpoint, ZooModule):
    """A soft prompt on the frozen random one-layer, one-head transformer (module docstring).

    Args:
        num_virtual_tokens: ``m``, the prompt's length.
        dim: d, the token width (the data's ``dim``).
        hidden: the FFN width of the block.
        max_len: the longest input sequence the block takes (positions).
        seed: draws the frozen block and the prompt's init.
        position_scale: scale of the block's positional buffer.
        init_scale: the prompt's init is ``N(0, init_scale^2)``.
        attention: ``exact`` softmax attention or ``fast`` (the polynomial method).
        degree: the polynomial degree of ``fast`` attention.
        lr, weight_decay: AdamW on the prompt under a per-step cosine schedule.
    """

    frozen_prefix = BASE_PREFIX

    def __init__(self, num_virtual_tokens: int = 4, dim: int = 2, hidden: int = 16, max_len: int = 64,
                 seed: int = 0, position_scale: float = 1.0, init_scale: float = 1.0, attention: str = "exact",
                 degree: int = 4, lr: float = 0.1, weight_decay: float = 0.0) -> None:
        super().__init__()
        check_num_virtual_tokens(num_virtual_tokens)
        if attention not in ATTENTIONS:
            raise ConfigError(f"PromptTuneOneLayer attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        self.save_hyperparameters()
        block = OneLayerTransformer(dim, hidden, max_len, seed, position_scale)
        self.model = PromptedTransformer(block, num_virtual_tokens)
        with torch.no_grad():
            init = torch.randn(num_virtual_tokens, dim, generator=torch.Generator().manual_seed(seed))
            self.model.prompt.embedding.weight.copy_(init_scale * init)
        self.register_buffer("offset", torch.zeros(max_len, dim))  # c, set in its first offset_length rows
        self.register_buffer("offset_length", torch.zeros((), dtype=torch.long))
        self._outputs: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def check_inputs(self, x: Tensor) -> None:
        """One-line ``ShapeError`` for inputs the block cannot read."""
        d, limit = self.hparams.dim, self.hparams.max_len
        self.check_shape("x", x, (None, None, d), f" (the model's dim={d}; the data's dim must match)")
        if x.shape[1] > limit:
            raise ShapeError(f"PromptTuneOneLayer: sequences of {x.shape[1]} tokens exceed the model's max_len={limit}")

    def forward(self, x: Tensor) -> Tensor:
        """``yhat(X) = tau_P(X) - c``: ``x [B, L, d] -> [B, L, d]``."""
        self.check_inputs(x)
        known = int(self.offset_length)
        if known == 0:
            raise ConfigError("PromptTuneOneLayer has no output offset c yet: fit it, or load a checkpoint "
                              "(--ckpt_path), before validate/test/predict")
        if x.shape[1] > known:
            raise ShapeError(f"PromptTuneOneLayer: sequences of {x.shape[1]} tokens, but c was computed on "
                             f"{known}-token training sequences; expected at most {known}")
        out = self.model(x, self.hparams.attention, self.hparams.degree)
        return out - self.offset[: x.shape[1]].to(out.dtype)

    # -- c: the frozen block's mean output on the training inputs ------------------------------
    def set_offset(self, inputs: list[Tensor]) -> None:
        """``c = (1/N) sum_n tau_0(X_n)`` over batches of training inputs ``[B, L, d]`` (summed across
        processes under DDP)."""
        total, count = None, torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for x in inputs:
                self.check_inputs(x)
                out = self.model.model(x.to(self.device)).double().sum(0)
                total = out if total is None else total + out
                count += x.shape[0]
        if total is None:
            raise ConfigError("PromptTuneOneLayer needs training inputs to compute c; the training set is empty")
        if self.trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        self.offset.zero_()
        self.offset[: total.shape[0]] = (total / count).to(self.offset.dtype)
        self.offset_length.fill_(total.shape[0])

    def _ensure_offset(self) -> None:
        if int(self.offset_length) > 0:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ConfigError("PromptTuneOneLayer computes c from a DataModule's training inputs; got no DataModule")
        self.set_offset([batch[0] for batch in datamodule.train_dataloader()])

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._ensure_offset()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._ensure_offset()

    def on_test_start(self) -> None:
        self._ensure_offset()

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = (self(x) - y).pow(2).mean()
        self.log_train(batch_idx, loss=loss)
        return loss

    def _store(self, name: str, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        self._outputs.setdefault(name, []).append((self(x).detach(), y.detach()))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._store("val/" if dataloader_idx == 0 else "val/train_", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._store("test/", batch)

    def _log_errors(self) -> None:
        stored, self._outputs = self._outputs, {}
        for prefix, pairs in stored.items():
            pred, target = torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs])
            if self.trainer.world_size > 1:
                pred, target = self.all_gather(pred).flatten(0, 1), self.all_gather(target).flatten(0, 1)
            values = {"relative_error": relative_error(pred, target), "worst_pair_error": worst_pair_error(pred, target),
                      "mse": float((pred - target).pow(2).mean())}
            for name in METRICS:
                self.log(f"{prefix}{name}", values[name], prog_bar=name == "relative_error",
                         add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._log_errors()

    def on_test_epoch_end(self) -> None:
        self._log_errors()

