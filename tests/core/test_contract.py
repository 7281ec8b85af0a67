"""The contract every model of the zoo keeps, looped over the registry (as timm loops its tests
over ``list_models()``):

- every shipped checkpoint (``zoo.list_pretrained()``) loads safely (sha256, ``weights_only``) in
  eval mode as the class its manifest names, and runs one forward on a batch of its own
  DataModule (its first config's ``data`` section), with a finite output per sample;
- every LightningModule (``model_classes()``) fits one step through the real CLI on a tiny
  config, and the ``last.ckpt`` it writes rebuilds the same weights, through the registry
  (``build_from_checkpoint(verify_checkpoint(...))``) and through Lightning
  (``load_from_checkpoint(..., weights_only=True)``). A class added to a paper package without
  an entry in ``TINY`` fails ``test_every_model_class_has_a_tiny_config``.
"""

from __future__ import annotations

import csv
import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor

import data_modules
import zoo
from tests.conftest import ROOT, SHARED_DATA, run_cli
from zoo.core.registry import build_from_checkpoint, model_class, model_classes, pretrained_info, verify_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


# -- one forward, the way each model's own evaluation calls it ---------------------------------
def _diffusion_input(model, x0: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_t, t)`` at seeded timesteps and noise, as the DiT modules' validation draws them."""
    generator = torch.Generator().manual_seed(0)
    t = torch.randint(0, model.diffusion.num_steps, (len(x0),), generator=generator)
    return model.diffusion.q_sample(x0, t, generator=generator), t


def _conditional_dit(model, batch):  # ConditionalDiT._ema_loss: the EMA DiT on encoded images
    images, labels = batch
    x_t, t = _diffusion_input(model, model.encode(images))
    return model.ema(x_t, t, y=labels if model.hparams.num_classes else None)


def _latent_dit(model, batch):  # LatentDiT._evaluate: the score network on noised data
    x, _ = batch
    return model(*_diffusion_input(model, x))


def _uhop(model, batch):  # UHopPlus.validation_step: retrieval from the masked queries
    targets, masked, noisy = batch
    retrieved, weights = model.retrieve(masked, model.hparams.separations[0])
    return retrieved


#: class name -> (batch -> output whose first dimension is the batch's). Explicit on purpose:
#: a new model needs one line here, read off its ``validation_step``.
FORWARD: dict[str, Callable[[Any, Any], Tensor]] = {
    "ImageClassifier": lambda model, batch: model(batch[0]),  # (images, labels) -> logits
    "Forecaster": lambda model, batch: model(batch[0]),  # (window, future) -> forecast
    "RepeatLast": lambda model, batch: model(batch[0]),  # same
    "SeasonalNaive": lambda model, batch: model(batch[0]),  # same
    "LinearForecaster": lambda model, batch: model(batch[0]),  # same
    "PatchForecaster": lambda model, batch: model(batch[0]),  # same
    "HopfieldMIL": lambda model, batch: model(batch[0], batch[1]),  # (instances, padding, labels) -> bag logits
    "UHopPlus": _uhop,  # (memory, masked, noisy) -> retrieved patterns
    "ConditionalDiT": _conditional_dit,  # (images, labels) -> predicted noise
    "LatentImageDiT": _conditional_dit,  # same, on the autoencoder's latents
    "LatentDiT": _latent_dit,  # (x, _) -> predicted noise
    "ImageAutoencoder": lambda model, batch: model.decode(model.encode(batch[0])),  # images -> reconstructions
    "InContextRegression": lambda model, batch: model(batch[0], batch[1]),  # (xs, ys, var) -> predictions [B, n]
    "AntibodyLM": lambda model, batch: model(batch["inputs"]),  # masked tokens -> logits [B, L, vocab]
    "CausalLMModule": lambda model, batch: model(batch["inputs"]),  # byte tokens -> next-token logits [B, T, vocab]
    "LoRAFineTune": lambda model, batch: model(batch["inputs"]),  # same, through the LoRA-adapted LM
    "PromptTuneLM": lambda model, batch: model(batch["inputs"]),  # same, read after the soft prompt
    "PromptTuneOneLayer": lambda model, batch: model(batch[0]),  # (X, y) -> tau_P(X) - c [B, L, d]
    "InstructionTune": lambda model, batch: model(batch["inputs"]),  # request + response bytes -> logits
    # patches -> loop type logits [B, K, 20] on the loops noised at seeded timesteps, as its validation_step does
    "CoDesignDiffusion": lambda model, batch: model.denoise(batch, generator=torch.Generator().manual_seed(0))[2],
    # the same, through the policy being aligned
    "CoDesignAlignment": lambda model, batch: model.policy.denoise(batch, generator=torch.Generator().manual_seed(0))[2],
}


def batch_size_of(batch) -> int:
    if isinstance(batch, dict):  # token batches ("inputs"), or a design-mode patch dict (its first tensor)
        return len(batch["inputs"]) if "inputs" in batch else len(next(v for v in batch.values() if isinstance(v, Tensor)))
    return len(batch[0])


def skip_without_shared_data(data_dir: str | None) -> None:
    """Skip (naming the folder) when a DataModule reads ``../shared/data`` and it is absent."""
    if data_dir is None:
        return
    folder = (ROOT / data_dir).resolve()
    if folder.is_relative_to(SHARED_DATA.resolve()) and not folder.is_dir():
        pytest.skip(f"needs {folder} ({SHARED_DATA} is absent on this machine)")


#: Fewer samples per split where a DataModule draws them (the forward needs one batch).
SMALL = {"batch_size": 4, "num_val": 8, "num_test": 8}


def example_batch(config: str):
    """One test batch of the DataModule in ``config``'s ``data`` section, small."""
    section = yaml.safe_load((ROOT / config).read_text())["data"]
    cls = getattr(data_modules, section["class_path"].rpartition(".")[2])
    init_args = dict(section.get("init_args") or {})
    skip_without_shared_data(init_args.get("data_dir"))
    accepted = inspect.signature(cls).parameters
    init_args.update({k: v for k, v in SMALL.items() if k in accepted})
    datamodule = cls(**init_args)
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))


def test_a_missing_shared_folder_skips_with_its_path(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "SHARED_DATA", ROOT / "no-shared" / "data")
    with pytest.raises(pytest.skip.Exception, match="needs .*no-shared/data/timeseries"):
        skip_without_shared_data("no-shared/data/timeseries")
    skip_without_shared_data("data/mnist")  # a folder outside ../shared/data is the DataModule's to report


@pytest.mark.parametrize("name", zoo.list_pretrained())
def test_pretrained_loads_in_eval_mode_and_runs_a_forward(name):
    info = pretrained_info(name)
    batch = example_batch(info["configs"][0])  # skips first when the data is absent
    model = zoo.load_pretrained(name)
    assert type(model) is model_class(info["class"])
    assert not model.training and not any(m.training for m in model.modules()), "load_pretrained returns eval mode"
    assert info["class"] in FORWARD, f"add {info['class']} to FORWARD (how its validation_step calls it)"
    with torch.no_grad():
        output = FORWARD[info["class"]](model, batch)
    n = batch_size_of(batch)
    assert output.shape[0] == n, f"{name}: output {list(output.shape)} for a batch of {n}"
    assert torch.isfinite(output).all(), f"{name}: non-finite output"


# -- one training step through the CLI, then the checkpoint round trip -------------------------
def write_series(folder: Path) -> dict[str, Any]:
    """A small ETT-like CSV (date, three channels, OT) for the forecaster."""
    path = folder / "series.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date", "a", "b", "c", "OT"])
        for i in range(160):
            writer.writerow([f"t{i}", *(round(math.sin(i / (3 + k)) + 0.1 * k, 4) for k in range(4))])
    return {"data_dir": str(folder), "file": "series.csv"}


def write_antibodies(folder: Path) -> dict[str, Any]:
    """A CSV of 20 heavy chains (numbered by IMGT, varied CDR-H3) for the antibody LM."""
    from tests.alignab.test_antibody_data import antibody_rows, write_csv

    write_csv(folder / "heavy.csv", antibody_rows(20))
    return {"data_dir": str(folder), "file": "heavy.csv"}


def write_complexes(folder: Path) -> dict[str, Any]:
    """Five small synthetic antibody-antigen complexes (PDB files + cases.tsv) for the co-design diffusion."""
    from tests.alignab.test_codesign_data import write_complexes as write

    return write(folder, 5)


#: class name -> (model init_args, DataModule class, its init_args, optional writer of data files
#: returning more init_args). Tiny, offline: scikit-learn digits, drawn data or written files.
TINY: dict[str, tuple[dict, str, dict, Callable[[Path], dict] | None]] = {
    "ImageClassifier": (
        {"channels": [8], "head": "ndlinear", "lr": 0.01},
        "DigitsDataModule", {"batch_size": 16}, None),
    "Forecaster": (
        {"lookback": 16, "horizon": 4, "in_features": 4, "out_features": 4, "d_model": 8, "num_heads": 2,
         "ff_dim": 8, "layer": "ndlinear"},
        "TimeSeriesDataModule", {"lookback": 16, "horizon": 4, "val_fraction": 0.2, "test_fraction": 0.2,
                                 "batch_size": 8}, write_series),
    "RepeatLast": (
        {"lookback": 16, "horizon": 4, "channels": 4},
        "TimeSeriesDataModule", {"lookback": 16, "horizon": 4, "val_fraction": 0.2, "test_fraction": 0.2,
                                 "batch_size": 8}, write_series),
    "SeasonalNaive": (
        {"lookback": 16, "horizon": 4, "channels": 4, "period": 6},
        "TimeSeriesDataModule", {"lookback": 16, "horizon": 4, "val_fraction": 0.2, "test_fraction": 0.2,
                                 "batch_size": 8}, write_series),
    "LinearForecaster": (  # the closed-form fit of DLinear at the start, then one (logging) step
        {"lookback": 16, "horizon": 4, "channels": 4, "decomposition": True, "kernel": 5, "solver": "lstsq"},
        "TimeSeriesDataModule", {"lookback": 16, "horizon": 4, "val_fraction": 0.2, "test_fraction": 0.2,
                                 "batch_size": 8}, write_series),
    "PatchForecaster": (
        {"lookback": 16, "horizon": 4, "channels": 4, "patch_len": 4, "stride": 4, "d_model": 8, "num_heads": 2,
         "ff_dim": 8, "num_layers": 1, "layer": "ndlinear", "period": 2},
        "TimeSeriesDataModule", {"lookback": 16, "horizon": 4, "val_fraction": 0.2, "test_fraction": 0.2,
                                 "batch_size": 8}, write_series),
    "HopfieldMIL": (
        {"hidden_size": 8, "separation_weight": 0.1},
        "DigitBagsDataModule", {"bag_size": 4, "bag_size_std": 1.0, "num_train": 8, "num_val": 4, "num_test": 4,
                                "batch_size": 4}, None),
    "UHopPlus": (
        {"in_dim": 64, "feature_dim": 16, "separations": ["softmax"]},
        "MemoryDataModule", {"source": "digits", "num_memories": 8, "batch_size": 4}, None),
    "ConditionalDiT": (
        {"size": "DiT-tiny", "patch_size": 4, "input_size": 8, "num_steps": 10, "sample_steps": 2},
        "DigitsDataModule", {"normalize": False, "batch_size": 8}, None),
    "LatentImageDiT": (  # on the latents of the shipped digits autoencoder (checkpoints/, in git)
        {"size": "DiT-tiny", "patch_size": 2, "input_size": 8, "autoencoder": "digits-ae", "num_steps": 10,
         "sample_steps": 2},
        "DigitsDataModule", {"normalize": False, "batch_size": 8}, None),
    "LatentDiT": (
        {"ambient_dim": 8, "latent_dim": 4, "size": "DiT-tiny", "num_steps": 10, "eval_samples": 8},
        "SubspaceDataModule", {"ambient_dim": 8, "latent_dim": 4, "num_train": 16, "num_val": 8, "num_test": 8,
                               "batch_size": 8}, None),
    "ImageAutoencoder": (
        {"widths": [4, 8], "latent_channels": 2},
        "DigitsDataModule", {"normalize": False, "batch_size": 8}, None),
    "InContextRegression": (
        {"n_dims": 3, "n_positions": 5, "backbone": "gpt2", "width": 16, "depth": 1, "heads": 2, "report_at": [1, 2]},
        "ICLTaskDataModule", {"task": "linear", "n_dims": 3, "n_points": 5, "num_train": 16, "num_val": 8,
                              "num_test": 8, "batch_size": 4}, None),
    "AntibodyLM": (
        {"size": "custom", "dim": 16, "depth": 1, "heads": 2, "max_length": 160, "dropout": 0.0},
        "AntibodySequenceDataModule", {"max_length": 160, "val_fraction": 0.2, "test_fraction": 0.2,
                                       "batch_size": 4}, write_antibodies),
    "CausalLMModule": (
        {"size": "lm-tiny", "max_position_embeddings": 32, "sample_tokens": 8},
        "TextDataModule", {"block_size": 16, "batch_size": 4}, None),
    "LoRAFineTune": (  # adapters on the shipped byte-level LM lm-pydoc (checkpoints/, in git)
        {"base": "lm-pydoc", "lora_rank": 2, "lora_targets": "full", "sample_tokens": 8},
        "TextDataModule", {"corpus": "stdlib_docstrings", "block_size": 16, "batch_size": 4}, None),
    "PromptTuneLM": (  # a soft prompt on the shipped lm-pydoc; its checkpoint holds the prompt only
        {"base": "lm-pydoc", "num_virtual_tokens": 2, "sample_tokens": 8},
        "TextDataModule", {"corpus": "stdlib_docstrings", "block_size": 16, "batch_size": 4}, None),
    "InstructionTune": (  # every weight of the shipped lm-pydoc on templated requests (responses scored)
        {"base": "lm-pydoc", "max_new_tokens": 2, "sample_tokens": 8},
        "InstructionDataModule", {"refusals": True, "batch_size": 4}, None),
    "PromptTuneOneLayer": (  # a soft prompt on the frozen random one-layer block; checkpoints hold the prompt and c
        {"num_virtual_tokens": 2, "dim": 2},
        "Seq2SeqDataModule", {"task": "lipschitz", "dim": 2, "length": 2, "num_train": 8, "num_val": 4,
                              "num_test": 4, "batch_size": 8}, None),
    "CoDesignDiffusion": (  # LM guidance from the shipped alignab-lm-oas (checkpoints/, in git); synthetic complexes
        {"size": "tiny", "num_steps": 5, "num_samples": 1, "num_designs": 1, "pack_side_chains": False},
        "ComplexDataModule", {"patch_size": 32, "design_cdrs": ["H1", "H2", "H3", "L1", "L2", "L3"],
                              "val_fraction": 0.2, "test_fraction": 0.2, "batch_size": 2}, write_complexes),
    "CoDesignAlignment": (  # aligns the shipped alignab-codesign-h3 on synthetic complexes: one short round
        {"init_from": "alignab-codesign-h3", "designs_per_complex": 4, "sample_steps": 10, "num_samples": 1,
         "test_steps": 2},
        "ComplexDataModule", {"patch_size": 32, "design_cdrs": ["H3"], "val_fraction": 0.2, "test_fraction": 0.2,
                              "batch_size": 2}, write_complexes),
}

ONE_STEP = [
    "--trainer.max_steps=1", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu",
    "--trainer.devices=1", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def test_every_model_class_has_a_tiny_config():
    """A LightningModule added to a paper package must be added to TINY and FORWARD here."""
    classes = set(model_classes())
    assert set(TINY) == classes, f"not covered: {sorted(classes - set(TINY))}; gone: {sorted(set(TINY) - classes)}"
    assert set(FORWARD) == classes, f"not covered: {sorted(classes - set(FORWARD))}; gone: {sorted(set(FORWARD) - classes)}"


def weight_differences(a: dict[str, Tensor], b: dict[str, Tensor]) -> list[str]:
    """Keys whose tensors differ (or that only one side has)."""
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("name", sorted(model_classes()))
def test_one_training_step_then_the_checkpoint_reloads(name, tmp_path):
    if name not in TINY:
        pytest.fail(f"{name} has no tiny config: add it to TINY (and its forward to FORWARD) in {Path(__file__).name}")
    model_args, data_class, data_args, write = TINY[name]
    data_args = {**data_args, **(write(tmp_path) if write else {})}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": name, "init_args": model_args},
        "data": {"class_path": data_class, "init_args": data_args},
    }))
    cli = run_cli("fit", "--config", str(config), *ONE_STEP, f"--trainer.default_root_dir={tmp_path}")
    assert type(cli.model) is model_classes()[name]
    assert cli.trainer.global_step == 1, "one optimizer step"
    trained = {k: v.detach().cpu() for k, v in cli.model.state_dict().items()}
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert path.is_file(), f"no last.ckpt in {sorted(p.name for p in (tmp_path / 'checkpoints').glob('*'))}"

    rebuilt = build_from_checkpoint(verify_checkpoint(path))
    assert type(rebuilt) is type(cli.model)
    assert not weight_differences(trained, rebuilt.state_dict()), "build_from_checkpoint restores the trained weights"

    loaded = type(cli.model).load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert not weight_differences(trained, loaded.state_dict()), "load_from_checkpoint restores the trained weights"
