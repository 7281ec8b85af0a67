"""LoRA adapters: ``W = W0 + (alpha / r) B A`` on chosen linear layers of any model.

Hu et al. (2021), as restated in Sec. 2 of "Computational Limits of LoRA" (Hu et al., 2024): a
frozen weight ``W0 [out, in]`` is fine-tuned through a rank-``r`` update ``B A`` with
``A [r, in]`` and ``B [out, r]``, scaled by ``alpha / r``::

    h = W0 x + b + (alpha / r) B A dropout(x)

``A`` starts Kaiming-uniform with ``a = sqrt(5)`` (the ``nn.Linear`` default, as loralib and PEFT
do) and ``B`` at zero, so an adapted model starts out equal to its base. The paper adapts the
attention weights: ``"partial"`` = W_Q, W_V and ``"full"`` = W_Q, W_K, W_V (:data:`PRESETS`, in the
Hugging Face Llama names ``q_proj``/``k_proj``/``v_proj``). Any other ``nn.Linear`` is adapted by
name, e.g. the fused ``qkv`` and ``proj`` of the zoo's DiT and ICL transformer.

Parameter layout of :class:`LoRALinear` (a module that replaced ``...q_proj``)::

    ...q_proj.base_layer.weight   W0, frozen (and .bias, if the base had one)
    ...q_proj.lora_A              A [r, in_features]
    ...q_proj.lora_B              B [out_features, r]

the same as PEFT's but for its ``lora_A.default.weight`` -> ``lora_A``. :func:`lora_state_dict`
holds the ``lora_A``/``lora_B`` entries only; :func:`save_adapter` writes them with the base
model's name and sha256 so that :func:`load_adapter` refuses another base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.core.base_files import load_base_file, save_base_file
from zoo.core.errors import CheckpointError, ConfigError

PRESETS = {"partial": ("q_proj", "v_proj"), "full": ("q_proj", "k_proj", "v_proj")}
ADAPTER_FORMAT = "zoo-lora-adapter"
ADAPTER_VERSION = 1


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a rank-``r`` update (module docstring).

    Args:
        base: the layer to adapt; it is kept (as ``base_layer``) and frozen, not copied.
        r: the rank, ``>= 1``.
        alpha: the scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout probability on the adapter's input, in ``[0, 1)``.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> None:
        super().__init__()
        check_hyperparameters(r, alpha, dropout)
        self.base_layer = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kwargs))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kwargs))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> Tensor:
        """``(alpha / r) B A [out, in]``, the update merged into ``W0``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        """``W0 x + b + (alpha / r) B A dropout(x)``; after :meth:`merge` the merged layer alone.

        The update is added by one ``addmm(out, h, B^T, alpha=alpha / r)`` with ``h = A dropout(x)``:
        the scale and the sum ride on the GEMM instead of two more full-width passes (PEFT's
        ``out + lora_B(lora_A(x)) * scaling``), and the backward scales only the rank-``r``
        gradients (``benchmarks/lora/peft_speed.py``)."""
        out = self.base_layer(x)
        if self.merged:
            return out
        h = F.linear(self.dropout(x), self.lora_A)
        summed = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, self.r), self.lora_B.t(),
                             alpha=self.scaling)
        return summed.view(out.shape)

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + (alpha / r) B A``, so inference costs one matmul; no-op when merged.

        While merged the adapter gets no gradient: call :meth:`unmerge` before training it again."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """``W0 <- W0 - (alpha / r) B A``, the inverse of :meth:`merge` up to rounding; no-op when unmerged."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def check_hyperparameters(r: int, alpha: float, dropout: float) -> None:
    """ConfigError unless ``r`` is a positive int, ``alpha > 0`` and ``0 <= dropout < 1``."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ConfigError(f"LoRA rank r must be a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def resolve_targets(target_modules: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name (``"partial"``, ``"full"``), one module name or a list of names -> names."""
    if isinstance(target_modules, str):
        return PRESETS.get(target_modules, (target_modules,))
    targets = tuple(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"target_modules must be a preset {sorted(PRESETS)} or a non-empty list of module "
                          f"names, got {target_modules!r}")
    return targets


def matches(name: str, target: str) -> bool:
    """``name`` is ``target`` or ends with ``"." + target`` (``"q_proj"``, ``"self_attn.q_proj"``)."""
    return name == target or name.endswith("." + target)


def apply_lora(model: nn.Module, target_modules: str | Sequence[str] = ("q_proj", "v_proj"), r: int = 8,
               alpha: float = 16, dropout: float = 0.0) -> list[str]:
    """Replace, in place, every ``nn.Linear`` whose dotted name matches a target by a :class:`LoRALinear`.

    A target matches a module whose full name is the target or ends with ``"." + target``. Every
    target must match at least one module, and every module it matches must be a plain
    ``nn.Linear`` (not yet adapted). Returns the adapted modules' names, in model order. Only the
    adapted base layers are frozen; :func:`mark_only_lora_as_trainable` freezes the rest.
    """
    check_hyperparameters(r, alpha, dropout)
    targets = resolve_targets(target_modules)
    modules = dict(model.named_modules())
    inside_adapters = tuple(f"{name}." for name, m in modules.items() if isinstance(m, LoRALinear))
    chosen = []
    for target in targets:
        hits = [name for name in modules if name and matches(name, target) and not name.startswith(inside_adapters)]
        if not hits:
            linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
            shown = ", ".join(linears[:6]) + (", ..." if len(linears) > 6 else "") if linears else "none"
            raise ConfigError(f"LoRA target {target!r} matches no module of {type(model).__name__}; "
                              f"its linear layers are: {shown}")
        for name in hits:
            module = modules[name]
            if isinstance(module, LoRALinear):
                raise ConfigError(f"LoRA target {target!r}: {name!r} already has a LoRA adapter")
            if not isinstance(module, nn.Linear):
                raise ConfigError(f"LoRA target {target!r} matches {name!r}, a {type(module).__name__}; "
                                  f"expected an nn.Linear")
            parent = modules[name.rpartition(".")[0]]
            if isinstance(parent, nn.MultiheadAttention):
                raise ConfigError(f"LoRA target {target!r} matches {name!r} inside nn.MultiheadAttention, "
                                  f"which reads its weight directly; expected a linear called as a module")
            if name not in chosen:
                chosen.append(name)
    order = list(modules)
    chosen.sort(key=order.index)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name], child, LoRALinear(modules[name], r, alpha, dropout))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's :class:`LoRALinear` modules by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def mark_only_lora_as_trainable(model: nn.Module) -> None:
    """``requires_grad`` on the ``lora_A``/``lora_B`` parameters only (loralib's function of that name)."""
    model.requires_grad_(False)
    for layer in lora_layers(model).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)


def lora_parameter_count(model: nn.Module) -> int:
    """Number of adapter entries, ``sum r (in + out)`` over the adapted layers."""
    return sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in lora_layers(model).values())


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only, ``{"<layer>.lora_A": A, "<layer>.lora_B": B}`` (detached, shared storage)."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{name}.lora_A"] = layer.lora_A.detach()
        state[f"{name}.lora_B"] = layer.lora_B.detach()
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor], strict: bool = True) -> list[str]:
    """Copy adapter tensors into the model's LoRA layers; returns the keys loaded.

    Merged layers are unmerged, loaded and merged again. A shape mismatch is always an error; with
    ``strict``, so is a key the model lacks or a key of the model missing from ``state``.
    """
    own = lora_state_dict(model)
    if strict:
        unknown = [key for key in state if key not in own]
        if unknown:
            raise CheckpointError(f"LoRA state has key {unknown[0]!r}, which is no adapter of {type(model).__name__}; "
                                  f"expected keys like {next(iter(own), 'none (the model has no LoRA layers)')!r}")
        missing = [key for key in own if key not in state]
        if missing:
            raise CheckpointError(f"LoRA state lacks key {missing[0]!r} of {type(model).__name__}")
    loaded = [key for key in own if key in state]
    for key in loaded:
        value = state[key]
        if not isinstance(value, Tensor) or value.shape != own[key].shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CheckpointError(f"LoRA state key {key!r} has shape {shape}, expected {tuple(own[key].shape)}")
    layers = lora_layers(model)
    merged = [layer for layer in layers.values() if layer.merged]
    for layer in merged:
        layer.unmerge()
    for key in loaded:
        own[key].copy_(state[key])
    for layer in merged:
        layer.merge()
    return loaded


def merge_lora(model: nn.Module) -> None:
    """:meth:`LoRALinear.merge` on every adapted layer."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """:meth:`LoRALinear.unmerge` on every adapted layer."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def check_plain(value: object, where: str) -> None:
    """ConfigError unless ``value`` is built of None, bool, int, float, str, lists, tuples and str-keyed dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"adapter config key {key!r} in {where} must be a str")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise ConfigError(f"adapter {where} is a {type(value).__name__}; expected plain types "
                      f"(None, bool, int, float, str, list, dict) so it loads with weights_only=True")


def save_adapter(path: str | Path, model: nn.Module, base_name: str, base_sha256: str, config: dict) -> None:
    """Write the adapter tensors with the base model's name and sha256 and the adapter ``config``.

    ``config`` holds plain types; its keys ``target_modules``, ``r``, ``alpha``, ``dropout`` (those of
    :func:`apply_lora`) let :func:`load_adapter` add the adapters to a fresh base model.
    """
    if not lora_layers(model):
        raise ConfigError(f"{type(model).__name__} has no LoRA layers to save; call apply_lora first")
    if not isinstance(config, dict):
        raise ConfigError(f"adapter config must be a dict, got {type(config).__name__}")
    check_plain(config, "config")
    save_base_file(path, "adapter", ADAPTER_FORMAT, ADAPTER_VERSION, base_name, base_sha256, config=config,
                   state_dict={key: value.cpu().clone() for key, value in lora_state_dict(model).items()})


def load_adapter(path: str | Path, model: nn.Module, base_sha256: str) -> dict:
    """Load an adapter written by :func:`save_adapter` into ``model``, whose weights hash to ``base_sha256``.

    A file for another base (another sha256) is refused. A model without LoRA layers first gets
    them from the file's config (:func:`apply_lora` with its ``target_modules``, ``r``, ``alpha``,
    ``dropout``). Returns ``{"base_name", "base_sha256", "config"}`` as saved.
    """
    payload = load_base_file(path, "adapter", "LoRA adapter file", ADAPTER_FORMAT, ADAPTER_VERSION, base_sha256,
                             verb="trained")
    config = payload["config"]
    if not lora_layers(model):
        if "target_modules" not in config:
            raise CheckpointError(f"{type(model).__name__} has no LoRA layers and adapter {str(path)!r} "
                                  f"does not name its target_modules; call apply_lora first")
        keys = ("target_modules", "r", "alpha", "dropout")
        apply_lora(model, **{key: config[key] for key in keys if key in config})
    load_lora_state_dict(model, payload["state_dict"])
    return {key: payload[key] for key in ("base_name", "base_sha256", "config")}
