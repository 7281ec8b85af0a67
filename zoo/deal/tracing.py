"""Causal tracing by corrupt-and-restore: where in a causal LM does a behaviour live?

Method (Meng, Bau, Andonian & Belinkov, 2022, "Locating and Editing Factual Associations in GPT"
(ROME), section 2.1), as used by decoupled alignment (Luo et al., 2024, DeAl / DAPA) to find the
layers that carry refusals:

1. *clean run*: run the prompt and record every traced module's output ``h_i^(l)`` (layer ``l``,
   position ``i``) and the score ``s_clean`` (e.g. the probability of a target token at the end);
2. *corrupted run*: add Gaussian noise ``eps ~ N(0, nu^2)`` to the input embeddings of the chosen
   positions (default: all prompt positions), ``nu = noise * std(embedding matrix)`` (ROME uses three
   times the embeddings' standard deviation), and record the mean score ``s_corrupt`` over
   ``samples`` noise draws;
3. *corrupted-with-restoration runs*: rerun corrupted (with the same noise draws) but force one
   module's output at one position (or at all positions, ``per_position=False``) back to its clean
   value. Its score ``s_restored(kind, l, i)`` and the indirect effect ``s_restored - s_corrupt``
   say how much of the behaviour that module state carries.

Traced kinds: ``"layer"`` (the decoder layer's output hidden state), and any module path inside a
decoder layer (``"self_attn"``, ``"mlp"``, ``"mlp.gate_proj"``, ``"mlp.up_proj"``, ``"mlp.down_proj"``,
...). Outputs are replaced through forward hooks, so the zoo's :class:`zoo.nn.causal_lm.CausalLM`
and Hugging Face ``LlamaForCausalLM`` are traced by the same code (a module returning a tuple has
its first element replaced). The noise draws are batched, and the restorations of different
positions share a forward pass (one row block per position); everything runs under
``torch.no_grad`` in eval mode, is deterministic given ``seed``, and removes its hooks on return or
error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.core.plots import save_figure
from zoo.deal.transplant import decoder_layers

KINDS = ("layer", "self_attn", "mlp", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
Score = Callable[[Tensor], Tensor]


@dataclass
class TraceResult:
    """Scores of a causal trace. ``scores[kind]`` is ``[num_layers, T]`` (restoring that module at
    one layer and one position) or ``[num_layers]`` with ``per_position=False`` (at all positions);
    ``input_ids [T]``; ``noise_std`` the absolute standard deviation of the noise that was added."""

    clean_score: float
    corrupted_score: float
    scores: dict[str, Tensor]
    input_ids: Tensor
    corrupt_positions: list[int]
    noise: float
    noise_std: float
    samples: int
    per_position: bool

    @property
    def kinds(self) -> list[str]:
        return list(self.scores)

    @property
    def num_layers(self) -> int:
        return next(iter(self.scores.values())).shape[0]

    def indirect_effect(self, kind: str) -> Tensor:
        """``restored - corrupted`` score for ``kind``, same shape as ``scores[kind]``."""
        if kind not in self.scores:
            raise ConfigError(f"kind {kind!r} was not traced; traced kinds: {', '.join(self.scores)}")
        return self.scores[kind] - self.corrupted_score

    def layer_effect(self, kind: str) -> Tensor:
        """``[num_layers]``: the indirect effect per layer (the largest over positions when per position)."""
        effect = self.indirect_effect(kind)
        return effect.amax(dim=1) if effect.dim() == 2 else effect

    def argmax(self, kind: str) -> tuple[int, int] | int:
        """The ``(layer, position)`` (or ``layer``, not per position) with the highest restored score."""
        scores = self.indirect_effect(kind)
        flat = int(scores.flatten().argmax())
        return divmod(flat, scores.shape[1]) if scores.dim() == 2 else flat

    def to_dict(self) -> dict:
        """Plain Python values (JSON-ready)."""
        return dict(clean_score=self.clean_score, corrupted_score=self.corrupted_score,
                    scores={k: v.tolist() for k, v in self.scores.items()}, input_ids=self.input_ids.tolist(),
                    corrupt_positions=self.corrupt_positions, noise=self.noise, noise_std=self.noise_std,
                    samples=self.samples, per_position=self.per_position)


def token_probability(target: int, position: int = -1) -> Score:
    """A score: ``softmax(logits[:, position])[:, target]`` (the probability of token ``target``)."""

    def score(logits: Tensor) -> Tensor:
        return logits[:, position].softmax(dim=-1)[:, target]

    return score


# -- hooks -------------------------------------------------------------------------------------
def _hidden(output) -> Tensor:
    """The hidden state in a module's output: the output, or its first element for a tuple/list."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(output, hidden: Tensor):
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


@contextlib.contextmanager
def _hooked(hooks: Sequence[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register forward hooks for the duration of the block; always removed."""
    handles = []
    try:
        for module, fn in hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Inside the ``with``, every module of ``model`` is in eval mode; each gets its own mode back on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _logits(model: nn.Module, embeds: Tensor) -> Tensor:
    out = model(inputs_embeds=embeds, use_cache=False)
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, Tensor):
        raise ConfigError(f"{type(model).__name__}(inputs_embeds=...) returned {type(out).__name__}; expected "
                          f"logits or an object with .logits")
    return logits


def _scores(score: Score, logits: Tensor) -> Tensor:
    values = score(logits)
    if not isinstance(values, Tensor) or values.shape != (logits.shape[0],):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ShapeError(f"score(logits [B={logits.shape[0]}, T, V]) returned {shape}; expected a tensor "
                         f"[B={logits.shape[0]}], one score per row")
    return values.detach().to(torch.float64).cpu()


def _kind_module(layer: nn.Module, kind: str, index: int) -> nn.Module:
    if kind == "layer":
        return layer
    try:
        return layer.get_submodule(kind)
    except AttributeError:
        known = ["layer", *(name for name, _ in layer.named_modules() if name)]
        raise ConfigError(f"unknown trace kind {kind!r} in decoder layer {index}; expected 'layer' or a module "
                          f"path: {', '.join(known)}") from None


def _check_args(input_ids: Tensor, kinds: Sequence[str], corrupt_positions: Sequence[int] | None, noise: float,
                samples: int, batch_size: int) -> tuple[Tensor, list[str], list[int]]:
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point() or input_ids.numel() == 0 or not (
            input_ids.dim() == 1 or (input_ids.dim() == 2 and input_ids.shape[0] == 1)):
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ShapeError(f"input_ids must be integer token ids [T] or [1, T] with T >= 1, got {shape}")
    ids = input_ids.reshape(1, -1)
    length = ids.shape[1]
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = list(kinds)
    if not kinds or len(set(kinds)) != len(kinds) or not all(isinstance(k, str) for k in kinds):
        raise ConfigError(f"kinds must be distinct module kinds such as {KINDS}, got {kinds!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ConfigError(f"noise must be a finite number >= 0 (multiples of the embeddings' std), got {noise!r}")
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if corrupt_positions is None:
        positions = list(range(length))
    else:
        positions = []
        for p in corrupt_positions:
            if isinstance(p, bool) or not isinstance(p, int) or not -length <= p < length:
                raise ConfigError(f"corrupt position {p!r} is out of range for a prompt of {length} tokens; "
                                  f"expected an integer in -{length} .. {length - 1}")
            positions.append(p % length)
        positions = sorted(set(positions))
        if not positions:
            raise ConfigError("corrupt_positions is empty; give at least one position (or None for all)")
    return ids, kinds, positions


# -- the trace ---------------------------------------------------------------------------------
@torch.no_grad()
def causal_trace(model: nn.Module, input_ids: Tensor, score: Score, *, kinds: Sequence[str] = KINDS,
                 corrupt_positions: Sequence[int] | None = None, noise: float = 3.0, samples: int = 10,
                 seed: int = 0, per_position: bool = True, batch_size: int = 512) -> TraceResult:
    """Corrupt-and-restore causal trace of ``score`` on one prompt (see the module docstring).

    ``score(logits [B, T, V]) -> [B]`` (e.g. :func:`token_probability`). ``batch_size`` caps the
    rows of one forward pass (``samples`` rows per restored position)."""
    ids, kinds, positions = _check_args(input_ids, kinds, corrupt_positions, noise, samples, batch_size)
    layers = decoder_layers(model)
    modules = {kind: [_kind_module(layer, kind, i) for i, layer in enumerate(layers)] for kind in kinds}
    embed = model.model.embed_tokens
    param = embed.weight
    ids = ids.to(param.device)
    length = ids.shape[1]

    with eval_mode(model):
        clean_embeds = embed(ids)  # [1, T, D]
        cache: dict[tuple[str, int], Tensor] = {}

        def recorder(kind: str, index: int) -> Callable:
            def hook(module: nn.Module, args, output) -> None:
                hidden = _hidden(output)
                if not isinstance(hidden, Tensor) or hidden.dim() < 2 or tuple(hidden.shape[:2]) != (1, length):
                    raise ShapeError(f"trace kind {kind!r} at layer {index}: module output is not a tensor "
                                     f"[batch, T={length}, ...]; choose another kind")
                cache[kind, index] = hidden.detach().clone()
            return hook

        with _hooked([(modules[k][i], recorder(k, i)) for k in kinds for i in range(len(layers))]):
            clean_score = float(_scores(score, _logits(model, clean_embeds))[0])

        noise_std = float(noise * param.detach().to(torch.float64).std())
        generator = torch.Generator().manual_seed(seed)
        eps = torch.randn(samples, len(positions), clean_embeds.shape[-1], generator=generator, dtype=torch.float64)
        corrupted = clean_embeds.repeat(samples, 1, 1)
        corrupted[:, positions] += (noise_std * eps).to(dtype=corrupted.dtype, device=corrupted.device)
        corrupted_score = float(_scores(score, _logits(model, corrupted)).mean())

        def restorer(clean: Tensor, rows_position: Tensor | None) -> Callable:
            def hook(module: nn.Module, args, output):
                hidden = _hidden(output)
                if rows_position is None:
                    patched = clean.expand_as(hidden).clone()
                else:
                    patched = hidden.clone()
                    rows = torch.arange(hidden.shape[0], device=hidden.device)
                    patched[rows, rows_position] = clean[0, rows_position]
                return _with_hidden(output, patched)
            return hook

        chunk = max(1, batch_size // samples)
        scores: dict[str, Tensor] = {}
        for kind in kinds:
            table = torch.empty((len(layers), length) if per_position else (len(layers),), dtype=torch.float64)
            for index, module in enumerate(modules[kind]):
                clean = cache[kind, index]
                if not per_position:
                    with _hooked([(module, restorer(clean, None))]):
                        table[index] = _scores(score, _logits(model, corrupted)).mean()
                    continue
                for start in range(0, length, chunk):
                    block = list(range(start, min(start + chunk, length)))
                    rows_position = torch.tensor(block, device=param.device).repeat_interleave(samples)
                    with _hooked([(module, restorer(clean, rows_position))]):
                        values = _scores(score, _logits(model, corrupted.repeat(len(block), 1, 1)))
                    table[index, start:start + len(block)] = values.view(len(block), samples).mean(dim=1)
            scores[kind] = table
    return TraceResult(clean_score=clean_score, corrupted_score=corrupted_score, scores=scores,
                       input_ids=ids[0].detach().cpu(), corrupt_positions=positions, noise=float(noise),
                       noise_std=noise_std, samples=samples, per_position=per_position)


# -- the picture -------------------------------------------------------------------------------
_CMAPS = {"layer": "Purples", "self_attn": "Reds", "mlp": "Greens"}


def plot_trace(result: TraceResult, token_labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """A PNG with one heat map per traced kind (three to a row): restored score by token (rows;
    corrupted tokens marked ``*``) and layer (columns), as ROME's figures; a trace that is not per
    position is one row. Each panel's colour scale spans the corrupted to the clean score (or wider)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = len(result.input_ids)
    token_labels = [str(t) for t in token_labels]
    if len(token_labels) != length:
        raise ConfigError(f"plot_trace got {len(token_labels)} token labels for a prompt of {length} tokens; "
                          f"expected one label per token")
    corrupt = set(result.corrupt_positions)
    labels = [f"{t}*" if i in corrupt else t for i, t in enumerate(token_labels)]
    if not result.per_position:
        labels = ["all tokens"]
    kinds, layers = result.kinds, result.num_layers
    width = max(2.6, 0.32 * layers + 1.8)
    height = max(2.0, 0.26 * len(labels) + 1.4)
    columns = min(3, len(kinds))
    rows = math.ceil(len(kinds) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[len(kinds):]:
        ax.axis("off")
    for ax, kind in zip(axes.flat, kinds):
        data = result.scores[kind].to(torch.float64)
        data = data.T if data.dim() == 2 else data[None]  # [rows, layers]
        low = min(float(data.min()), result.corrupted_score)
        high = max(float(data.max()), result.clean_score)
        image = ax.imshow(data.numpy(), cmap=_CMAPS.get(kind.split(".")[0], "Blues"), aspect="auto",
                          interpolation="nearest", vmin=low, vmax=high if high > low else low + 1e-12)
        ax.set_title(f"restore {kind}", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_xticks(range(layers))
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle((f"{title}: " if title else "") + f"clean score {result.clean_score:.4g}, "
                 f"corrupted {result.corrupted_score:.4g} (noise {result.noise:g} std, {result.samples} samples)",
                 fontsize=9)
    return save_figure(fig, path)


__all__ = ["KINDS", "TraceResult", "causal_trace", "plot_trace", "token_probability"]
