"""LoRA fine-tuning of any zoo LightningModule from a config: the :class:`LoRA` callback.

``LoRAFineTune`` is the causal LM's own fine-tuning module; this callback gives the same adapters
(``W = W0 + (alpha / r) B A``, ``zoo.lora.adapter``) to every other model without touching its
code: the ICL transformer, the DiT, the classifiers. In a config::

    trainer:
      callbacks:
        - class_path: zoo.lora.LoRA
          init_args:
            base: icl-linear-d5          # a registered name or a checkpoint path (optional)
            target_modules: [qkv, proj]  # module names, as apply_lora matches them
            r: 4
            alpha: 8

At ``setup`` (before Lightning restores a ``--ckpt_path`` and before the optimizer is built) it

1. loads the base weights into the configured module (``verify_checkpoint``: sha256 checked for a
   registered file; the checkpoint must hold the module's class; strict ``load_state_dict``; the
   base's hyperparameters that differ from the config's are named in one warning). A run from a
   ``--ckpt_path`` reads the base too (Lightning's restore then overwrites it: the checkpoint holds
   the base weights as well);
2. replaces every ``nn.Linear`` matching ``target_modules`` by a ``LoRALinear`` (``apply_lora``; a name
   that matches nothing ends in one line listing the module's linear layers, as does ``r <= 0``);
3. freezes every other parameter (``mark_only_lora_as_trainable``); adapters on layers the module
   kept frozen stay frozen too.

Lightning checkpoints then hold the adapters with the frozen base (``<layer>.base_layer.weight``,
``<layer>.lora_A``, ``<layer>.lora_B``), so ``--ckpt_path last`` resumes exactly and ``test
--ckpt_path`` evaluates the adapted model, both with this callback in the config (a checkpoint
whose adapters do not match the callback's ends in one line, from a ``load_state_dict`` pre-hook). ``full_finetune: true`` is the
baseline: load the base and train every weight as the module normally does, no adapters.

Modules that keep a second, frozen copy of their network, as the DiT's EMA, get adapters in both
copies (the names match in both; the copy's are frozen); the module's own EMA update then averages
the adapters too (and moves the copy's frozen base weights toward the network's, as it always does).
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from zoo.core.errors import CheckpointError, ConfigError
from zoo.core.registry import (
    checkpoint_class,
    checkpoint_path,
    model_hparams,
    read_manifest,
    sha256,
    verify_checkpoint,
)
from zoo.lora.adapter import (
    apply_lora,
    check_hyperparameters,
    mark_only_lora_as_trainable,
    resolve_targets,
)

__all__ = ["LoRA"]

#: Hyperparameters a fine-tuning run is expected to change: not reported as differing from the base.
TRAINING_HPARAMS = ("lr", "learning_rate", "weight_decay")


class LoRA(Callback):
    """LoRA adapters on a LightningModule's linear layers (module docstring).

    Args:
        target_modules: ``"partial"`` (q_proj, v_proj), ``"full"`` (q_proj, k_proj, v_proj), one
            module name or a list; a module matches a name it equals or ends with after a dot
            (``qkv`` matches ``net.blocks.0.qkv``; ``attn.qkv`` only the attention's).
        r, alpha, dropout: rank, scale numerator (the update is ``alpha / r`` times ``B A``) and
            dropout on the adapters' input.
        base: registered name (``zoo.list_pretrained()``) or checkpoint path of the same class as the
            configured model, whose weights are loaded first; None keeps the module's own weights.
        full_finetune: load ``base`` and train every weight instead (no adapters): the baseline.
    """

    def __init__(self, target_modules: str | list[str] = "partial", r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0, base: str | None = None, full_finetune: bool = False) -> None:
        if not full_finetune:
            check_hyperparameters(r, alpha, dropout)
            resolve_targets(target_modules)
        if base is not None and (not isinstance(base, str) or not base):
            raise ConfigError(f"LoRA base must be a registered name or a checkpoint path, got {base!r}")
        if full_finetune and base is None:
            raise ConfigError("LoRA full_finetune=true needs a base to fine-tune (a registered name or a checkpoint path)")
        self.target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.base, self.full_finetune = base, full_finetune
        self.base_sha256: str | None = None
        self.adapted: list[str] = []
        self._module: LightningModule | None = None

    # -- setup --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Base weights, adapters, freezing (module docstring); once per module, whatever the stages."""
        if self._module is pl_module:
            return
        if self.base is not None:
            self.load_base(pl_module)
        if not self.full_finetune:
            self.adapt(pl_module)
        pl_module.register_load_state_dict_pre_hook(self.check_state_dict)
        self._module = pl_module
        source = f"base {self.base!r}" if self.base is not None else "the module's own weights"
        rank_zero_info(self.summary(pl_module, source))

    def adapt(self, pl_module: LightningModule) -> None:
        """Adapters on the targets, every other weight frozen. An adapter trains only where its base
        weight did: the copies a module keeps frozen (the DiT's EMA network) keep frozen adapters."""
        frozen = {name for name, p in pl_module.named_parameters() if not p.requires_grad}
        self.adapted = apply_lora(pl_module, self.target_modules, r=self.r, alpha=self.alpha, dropout=self.dropout)
        mark_only_lora_as_trainable(pl_module)
        for name in self.adapted:
            if f"{name}.weight" in frozen:
                layer = pl_module.get_submodule(name)
                layer.lora_A.requires_grad_(False)
                layer.lora_B.requires_grad_(False)

    def load_base(self, pl_module: LightningModule) -> None:
        """The weights of ``self.base`` into ``pl_module``; one-line ``CheckpointError`` when they cannot be."""
        cls = type(pl_module).__name__
        path = checkpoint_path(self.base)
        if not path.is_file():
            known = sorted(name for name, entry in read_manifest().items() if entry["class"] == cls)
            raise CheckpointError(f"LoRA base {self.base!r} is neither a registered name nor a checkpoint file; "
                                  f"registered {cls} checkpoints: {', '.join(known) or 'none'}")
        checkpoint = verify_checkpoint(path)
        recorded = checkpoint_class(checkpoint)
        if recorded != cls:
            raise CheckpointError(f"LoRA base {self.base!r}: {path} is a {recorded or 'class-less'} checkpoint; "
                                  f"the configured model is a {cls}")
        try:
            pl_module.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as err:
            reason = " ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err).splitlines()[0]
            raise CheckpointError(f"LoRA base {self.base!r} does not fit the configured {cls} ({reason}); give the "
                                  f"model section the base's hyperparameters (python -m zoo pretrained "
                                  f"{self.base})") from err
        differing = {key: value for key, value in model_hparams(checkpoint).items() if key not in TRAINING_HPARAMS
                     and key in pl_module.hparams and as_lists(pl_module.hparams[key]) != as_lists(value)}
        if differing:
            rank_zero_warn(f"LoRA base {self.base!r} was trained with "
                           + ", ".join(f"{k}={v!r} (config: {pl_module.hparams[k]!r})" for k, v in differing.items()))
        self.base_sha256 = sha256(path)

    def check_state_dict(self, module, state_dict, prefix, local_metadata, strict, *args) -> None:
        """Before a strict load into the adapted module (a ``--ckpt_path`` resume or test): one-line
        ``ConfigError`` unless the state's adapters are the ones this callback made (Lightning's own
        report of the mismatch is a long list)."""
        theirs = adapter_shapes({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
        ours = adapter_shapes(module.state_dict())
        if strict and theirs != ours:
            raise ConfigError(f"the checkpoint being loaded holds {describe(theirs)}, but the LoRA callback "
                              f"(target_modules={self.target_modules!r}, r={self.r}, full_finetune="
                              f"{self.full_finetune}) makes {describe(ours)}; give the callback the run's settings")

    def summary(self, pl_module: LightningModule, source: str) -> str:
        """One line: what was adapted, from which weights, how many parameters train."""
        total = sum(p.numel() for p in pl_module.parameters())
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        if self.full_finetune:
            return f"LoRA callback: full fine-tuning of {source}: {trainable:,} of {total:,} parameters trainable"
        shown = ", ".join(self.adapted[:4]) + (", ..." if len(self.adapted) > 4 else "")
        return (f"LoRA callback: r={self.r}, alpha={self.alpha} on {len(self.adapted)} layers ({shown}) of {source}: "
                f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f} %)")

    # -- logging and checkpoints ---------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trained = sum(p.numel() for name, p in pl_module.named_parameters()
                      if p.requires_grad and name.endswith((".lora_A", ".lora_B")))
        counts = {"params/lora": trained, "params/lora_layers": len(self.adapted)}
        if self.base_sha256 is not None:
            counts["lora/base_sha256"] = self.base_sha256
        for logger in trainer.loggers:
            logger.log_hyperparams(counts)

    def state_dict(self) -> dict:
        return {"target_modules": self.target_modules, "r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "base": self.base, "base_sha256": self.base_sha256, "full_finetune": self.full_finetune,
                "adapted": list(self.adapted)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_sha256 = state_dict.get("base_sha256", self.base_sha256)


def as_lists(value):
    """``value`` with tuples turned into lists (a config's list and a checkpoint's tuple compare equal)."""
    return [as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def adapter_shapes(state: dict) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the ``lora_A`` / ``lora_B`` entries of a state dict."""
    return {key: tuple(value.shape) for key, value in state.items() if key.endswith((".lora_A", ".lora_B"))}


def describe(shapes: dict[str, tuple[int, ...]]) -> str:
    """``"LoRA adapters of rank 4 on 4 layers (net.blocks.0.qkv, ...)"``, or ``"no LoRA adapters"``."""
    layers = [key.removesuffix(".lora_A") for key in shapes if key.endswith(".lora_A")]
    if not layers:
        return "no LoRA adapters"
    ranks = sorted({shapes[f"{layer}.lora_A"][0] for layer in layers})
    shown = ", ".join(layers[:2]) + (", ..." if len(layers) > 2 else "")
    return f"LoRA adapters of rank {'/'.join(map(str, ranks))} on {len(layers)} layers ({shown})"
