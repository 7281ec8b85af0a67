"""The zoo's command line: ``python -m zoo fit|validate|test|predict --config ...``.

LightningCLI in subclass mode. Every model in ``zoo.models`` and DataModule in ``data_modules``
is imported here, so configs may name them briefly (``model: ImageClassifier``). On top of
LightningCLI:

- one run folder, ``trainer.default_root_dir``: loggers whose ``save_dir`` is left unset write
  there (``version_N/``), and checkpoints go to ``<default_root_dir>/checkpoints``, so
  ``--ckpt_path last`` finds the last checkpoint of an earlier run of the same experiment;
- a ``checkpoint:`` section configures the ``ModelCheckpoint`` (``save_last`` on by default);
- every checkpoint carries the RNG states and the training order (exact resume), every fit
  plots its curves to ``curves.png``;
- with ``--ckpt_path`` the checkpoint's hyperparameters rebuild the model, but a ``--model.<name>``
  flag on the command line still wins (plain LightningCLI drops it silently);
- a bad config value, class name, data file, tensor shape or checkpoint ends with one line,
  ``error: ...``, and exit status 2.

``python -m zoo register NAME --config ...`` trains a checkpoint and adds it to the registry
(see ``zoo.pretrained``); ``python -m zoo seeds --seeds 0 1 2 -- --config ...`` fits and tests
under several seeds (see ``zoo.seeds``).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import warnings

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import data_modules
import zoo.models
from data_modules.base import ZooDataModule
from zoo.callbacks import Curves, ProgressBar, RNGState
from zoo.errors import ConfigError, ZooError

# Lightning 2.6 calls a pytree API that torch >= 2.10 deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")

# Placeholder for a logger's save_dir: replaced by trainer.default_root_dir after parsing.
RUN_DIR = "${trainer.default_root_dir}"

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": RUN_DIR, "name": None}},
    "callbacks": [RNGState(), Curves()],
}

_CLASS_KEYS = {"model": (zoo.models, LightningModule), "data": (data_modules, LightningDataModule)}


def known_classes(key: str) -> list[str]:
    """The short class names a config may use for ``model`` or ``data``."""
    module, base = _CLASS_KEYS[key]
    found = (getattr(module, name) for name in module.__all__)
    return sorted(
        c.__name__ for c in found
        if isinstance(c, type) and issubclass(c, base) and not inspect.isabstract(c) and not c.__module__.endswith(".base")
    )


def summarize_parser_error(message: str) -> str:
    """Turn jsonargparse's multi-line report into one line that names the bad value."""
    key = re.search(r'Parser key "([^"]+)"', message)
    key = key.group(1) if key else None
    if key is None and "Subtypes:" in message:  # a class failed to instantiate
        key = "data" if "LightningDataModule" in message else "model" if "LightningModule" in message else None
    given = re.findall(r"Given value: (.*)", message)
    lines = [line.rstrip() for line in message.splitlines()]
    if "Errors:" in message:
        body = lines[lines.index(next(x for x in lines if x.strip() == "Errors:")) + 1:]
        reasons, current = [], ""
        for line in body:
            text = line.strip()
            if text.startswith(("Given value", "Subtypes")):
                break
            if text.startswith("- "):
                current = text[2:]
                reasons.append(current)
            elif text:
                reasons[-1] = f"{reasons[-1]} {text}" if reasons else text
        reasons = [r for r in reasons if "NoneType" not in r]
    else:
        first = re.sub(r'^Parser key "[^"]+":\s*', "", lines[0]).strip()
        reasons = [x for x in [first, *(line.strip() for line in lines[1:])] if x and not x.startswith("Given value")]
    text = "; ".join(re.sub(r"Problem with given class_path '([^']+)':", r"\1:", r) for r in reasons)
    if key in _CLASS_KEYS and given and ("import path" in text or "not accessible" in text):
        return f"{key}: unknown class {given[-1].strip()!r}; available: {', '.join(known_classes(key))}"
    if given and not given[-1].startswith(("Namespace(", "NestedArg(")) and "Got value" not in text:
        text += f" (given: {given[-1].strip()})"
    return f"{key}: {text}" if key else text


class ZooParser(LightningArgumentParser):
    """Reports a bad argument in one line (``JSONARGPARSE_DEBUG=true`` raises the full report)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG", "").lower() in ("1", "true", "yes", "on"):
            super().error(message, ex)
        sys.stderr.write(f"error: {summarize_parser_error(message)}\n")
        self.exit(2)


class ZooSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` to the log dir (overwriting is fine: each run has its own version
    folder) and, with W&B, also stores the whole config in the run's config."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.parser.dump(self.config, skip_none=False, format="json")
                logger.experiment.config.update({"zoo_config": config}, allow_val_change=True)


class ZooCLI(LightningCLI):
    """LightningCLI in subclass mode with the zoo's defaults (module docstring)."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=ZooSaveConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            parser_class=ZooParser,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self._argv = list(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "last", "best", "hpc"):
            from zoo.pretrained import verify_checkpoint

            verify_checkpoint(ckpt_path)

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, Lightning rebuilds the model from the checkpoint's hyperparameters,
        which also overwrite what the command line set. Here a ``--model.<name>`` flag given on the
        command line still wins (``test --ckpt_path x.ckpt --model.cfg_scale 1.5`` samples at 1.5);
        model values from config files yield to the checkpoint, which must match its weights."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        explicit = {}
        for arg in self._argv:
            name = arg.split("=", 1)[0]
            if name.startswith("--model.") and name != "--model.class_path":
                key = name[len("--model."):].removeprefix("init_args.")
                explicit[key] = self.config[subcommand].get(f"model.init_args.{key}")
        super()._parse_ckpt_path()
        for key, value in explicit.items():
            self.config[subcommand][f"model.init_args.{key}"] = value

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and init_args.get("save_dir") == RUN_DIR:
                init_args.save_dir = root
        accelerator = config.trainer.accelerator
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; "
                "compose configs/trainer/cpu.yaml or ddp_cpu.yaml instead"
            )
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")

    def before_fit(self) -> None:
        if isinstance(self.datamodule, ZooDataModule):  # it saves its position in the epoch itself
            warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # jsonargparse reports a class's own __init__ error in a long list
            if "Errors:" not in str(err):
                raise
            raise ConfigError(summarize_parser_error(str(err))) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if config.get("enable_checkpointing") is False:  # the `checkpoint:` section would clash
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBarBase) for c in callbacks):
            extra.append(ProgressBar())
        return self._instantiate_trainer(config, extra)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m zoo`` (and the ``zoo`` console script)."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv:
        args = argv = ["--help"]
    try:
        if argv[0] == "register":
            from zoo.pretrained import register_main

            register_main(argv[1:])
        elif argv[0] == "seeds":
            from zoo.seeds import seeds_main

            seeds_main(argv[1:])
        elif argv[0] == "dp-strings":
            from zoo.dp_strings import main as dp_strings_main

            dp_strings_main(argv[1:])
        else:
            ZooCLI(args=args)
    except (ZooError, MisconfigurationException) as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
