"""``python -m zoo fit|validate|test|predict --config ...``: LightningCLI in subclass mode.

Every LightningModule of the paper packages (``zoo.core.registry.model_classes``) and every
DataModule in ``data_modules`` is imported here, so configs may name them briefly
(``model: ImageClassifier``). On top of LightningCLI:

- one run folder, ``trainer.default_root_dir``: loggers whose ``save_dir`` is left unset write
  there (``version_N/``), and checkpoints go to ``<default_root_dir>/checkpoints``, so
  ``--ckpt_path last`` finds the last checkpoint of an earlier run of the same experiment;
- a ``checkpoint:`` section configures the ``ModelCheckpoint`` (``save_last`` on by default);
- every checkpoint carries the RNG states and the training order (exact resume), every fit
  plots its curves to ``curves.png``;
- ``--ckpt_path FILE`` is verified (``weights_only=True``, sha256 for registered files) and read
  once; its hyperparameters rebuild the model (the class it records, resolved by name through the
  registry), but a ``--model.<name>`` flag on the command line still wins (plain LightningCLI
  drops it silently), and a config that asks for another class than the checkpoint holds is an error;
- a bad config value, class name, data file, tensor shape or checkpoint ends with one line,
  ``error: ...``, and exit status 2.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import sys
import warnings
from pathlib import Path

# jsonargparse >= 4.49 deprecates calls that Lightning 2.6 makes (add_instantiator, skip_none, ...):
# nothing a user can act on, so its deprecation notices stay off unless asked for.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import data_modules
from data_modules.base import ZooDataModule
from zoo.core.callbacks import Curves, ProgressBar, RNGState
from zoo.core.checkpoint import AtomicCheckpointIO, FiniteLoss, ZooCheckpoint
from zoo.core.errors import CheckpointError, ConfigError
from zoo.core.registry import checkpoint_class, model_classes, model_hparams, verify_checkpoint

# Lightning 2.6 calls a pytree API that torch >= 2.10 deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")

MODELS = model_classes()  # imports every paper package: configs name their classes briefly

# Placeholder for a logger's save_dir: replaced by trainer.default_root_dir after parsing.
RUN_DIR = "${trainer.default_root_dir}"

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": RUN_DIR, "name": None}},
    "callbacks": [RNGState(), Curves(), FiniteLoss()],
}


def known_classes(key: str) -> list[str]:
    """The short class names a config may use for ``model`` or ``data``."""
    if key == "model":
        return sorted(MODELS)
    found = (getattr(data_modules, name) for name in data_modules.__all__)
    return sorted(
        c.__name__ for c in found
        if isinstance(c, type) and issubclass(c, LightningDataModule) and not inspect.isabstract(c)
        and not c.__module__.endswith(".base")
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
        reasons, current, fallback = [], "", None
        for line in body:
            text = line.strip()
            if text.startswith(("Given value", "Subtypes")):
                break
            indent = len(line) - len(line.lstrip())
            if fallback is not None and indent > fallback:
                continue  # the accepted forms listed under jsonargparse's generic "Not a valid subclass of X"
            fallback = indent if text.startswith("- Not a valid subclass of") else None
            if text.startswith("- "):
                current = text[2:]
                reasons.append(current)
            elif text:
                reasons[-1] = f"{reasons[-1]} {text}" if reasons else text
        reasons = [r for r in reasons if "NoneType" not in r]
        # a class's own __init__ error (a callback's) next to that generic fallback: the former alone
        reasons = [r for r in reasons if not r.startswith("Not a valid subclass of")] or reasons
    else:
        first = re.sub(r'^Parser key "[^"]+":\s*', "", lines[0]).strip()
        reasons = [x for x in [first, *(line.strip() for line in lines[1:])] if x and not x.startswith("Given value")]
    text = "; ".join(re.sub(r"Problem with given class_path '([^']+)':", r"\1:", r) for r in reasons)
    if key in ("model", "data") and given and ("import path" in text or "not accessible" in text):
        name = given[-1].strip()
        nested = re.fullmatch(r"NestedArg\(key='class_path', val='(.*)'\)", name)  # --model.class_path Foo
        return f"{key}: unknown class {nested.group(1) if nested else name!r}; available: {', '.join(known_classes(key))}"
    if given and not given[-1].startswith(("Namespace(", "NestedArg(", "[Namespace(")) and "Got value" not in text:
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


def _config_files(argv: list[str]) -> list[str]:
    """The files given with ``--config``/``-c`` (both ``--config X`` and ``--config=X``)."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def _check_config_file(path: str) -> None:
    """An empty config, or one that is not a YAML mapping, named in one line (jsonargparse says
    only "Unexpected config")."""
    if not Path(path).is_file():
        return  # jsonargparse names a missing file itself
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if content is None:
        raise ConfigError(f"config file {path} is empty; expected a YAML mapping with model:, data: and trainer: sections")
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} holds a {type(content).__name__}, expected a YAML mapping "
                          "(model:, data:, trainer: ...)")


def _good_checkpoint_hint(damaged: Path) -> str:
    """"; the newest good one is X" for the newest other checkpoint of the folder that verifies."""
    for path in sorted(damaged.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if path != damaged:
            try:
                verify_checkpoint(path)
            except CheckpointError:
                continue
            return f"; the newest good one is {path} (--ckpt_path {path})"
    return ""


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
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False)
        parser.set_defaults({"checkpoint.save_last": True})

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        for path in _config_files(argv):
            _check_config_file(path)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        last = ckpt_path == "last"
        if last:
            ckpt_path = self._last_checkpoint(subcommand)
        if ckpt_path in (None, "best", "hpc"):
            return
        try:
            checkpoint = verify_checkpoint(ckpt_path)
        except CheckpointError as err:
            raise CheckpointError(f"--ckpt_path last: {err}{_good_checkpoint_hint(Path(ckpt_path))}" if last
                                  else str(err)) from err
        self._model_from_checkpoint(subcommand, ckpt_path, checkpoint, argv)

    def _last_checkpoint(self, subcommand: str) -> str | None:
        """``--ckpt_path last``: the run folder's ``last.ckpt``, then verified like any explicit
        path. ``fit`` without one starts afresh; ``validate``/``test``/``predict`` without one fail
        (they would evaluate random weights)."""
        config = self.config[subcommand]
        folder = Path(config.checkpoint.dirpath or Path(config.trainer.default_root_dir) / "checkpoints")
        path = folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        if not path.is_file():
            if subcommand != "fit":
                raise CheckpointError(f"--ckpt_path last: there is no {path} (no fit has saved in this run "
                                      "folder yet); fit first, or give --ckpt_path FILE")
            config.ckpt_path = None
            return None
        config.ckpt_path = str(path)
        return str(path)

    def _model_from_checkpoint(self, subcommand: str, ckpt_path: str, checkpoint: dict, argv: list[str]) -> None:
        """Rebuild the model config from a verified checkpoint's hyperparameters (module docstring):
        the class it records, resolved by name; ``--model.<name>`` flags on the command line win;
        values from config files yield to the checkpoint, which must match its weights."""
        recorded = checkpoint_class(checkpoint)
        if recorded is None:
            return
        config = self.config[subcommand]
        if recorded not in MODELS:
            raise ConfigError(f"--ckpt_path {ckpt_path} holds a {recorded}, which is not a model of the zoo "
                              f"({', '.join(sorted(MODELS))})")
        asked = config.get("model.class_path")
        if asked and asked.rpartition(".")[2] != recorded:
            raise ConfigError(f"--ckpt_path {ckpt_path} holds a {recorded}, but the config asks for "
                              f"{asked.rpartition('.')[2]}; give a {asked.rpartition('.')[2]} checkpoint or drop "
                              "the model section")
        explicit = {}
        for arg in argv:
            name = arg.split("=", 1)[0]
            if name.startswith("--model.") and name != "--model.class_path":
                key = name[len("--model."):].removeprefix("init_args.")
                explicit[key] = config.get(f"model.init_args.{key}")
        cls = MODELS[recorded]
        model = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "dict_kwargs": model_hparams(checkpoint)}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        for key, value in explicit.items():
            self.config[subcommand][f"model.init_args.{key}"] = value

    def _parse_ckpt_path(self) -> None:
        """Done by :meth:`parse_arguments`, which reads the checkpoint once (Lightning's version
        would read it again and overwrite the command line's ``--model.*`` flags)."""

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
        for name in ("lr", "learning_rate"):
            value = (config.model.get("init_args") or {}).get(name) if config.get("model") else None
            if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"model.{name} must be a finite number > 0, got {value}")
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"trainer.default_root_dir {root!r} cannot be created: {err.strerror or err}") from err

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
        """The trainer with the ``checkpoint:`` section's ``ModelCheckpoint`` (unless checkpointing
        is off) and the zoo's progress bar (unless the bar is off or the config brings its own)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer.get("enable_checkpointing") is not False:
            callbacks.append(ZooCheckpoint(**config.checkpoint.as_dict()))
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBarBase) for c in callbacks):
            callbacks.append(ProgressBar())
        built = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})
        if type(built.strategy.checkpoint_io) is TorchCheckpointIO:  # plain torch.save: make it atomic
            built.strategy.checkpoint_io = AtomicCheckpointIO()
        return built


def run(args: list[str] | None) -> ZooCLI:
    """``python -m zoo fit|validate|test|predict ...``; Lightning's configuration errors become ``ConfigError``."""
    try:
        return ZooCLI(args=args)
    except MisconfigurationException as err:
        raise ConfigError(str(err)) from err
    except SIGTERMException:  # the state at the stop was saved as last.ckpt (ZooCheckpoint)
        sys.stderr.write("error: stopped by SIGTERM; resume with --ckpt_path last\n")
        sys.exit(143)
