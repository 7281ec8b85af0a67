"""U-Hop+: the memory-set DataModule, Stage I through the CLI, retrieval against the plain
functions, checkpoints that retrieve on their own, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from data_modules.memories import MemoryDataModule, mask_queries, noisy_queries
from tests.conftest import run_cli
from zoo.core.errors import ConfigError, ShapeError
from zoo.hopfield.retrieval import min_separation, retrieve
from zoo.hopfield.uhop import UHopPlus

CONFIG = "configs/hopfield/uhop_digits.yaml"


def quiet(root: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *extra]


def test_memory_sets_are_seeded_flat_and_in_range():
    data = MemoryDataModule(num_memories=30, queries_per_memory=2, seed=3)
    data.setup()
    again = MemoryDataModule(num_memories=30, queries_per_memory=2, seed=3)
    again.setup()
    other = MemoryDataModule(num_memories=30, seed=4)
    other.setup()
    assert data.memories.shape == (30, 64) and data.image_shape == (1, 8, 8)
    assert torch.equal(data.memories, again.memories) and not torch.equal(data.memories, other.memories)
    assert 0 <= data.memories.min() and data.memories.max() <= 1
    targets, masked, noisy = data.test_set.tensors
    assert len(targets) == 60 and torch.equal(targets[:30], data.memories) and torch.equal(targets[30:], data.memories)
    assert not torch.equal(data.val_set.tensors[1], masked)  # validation and test draw different corruptions
    assert torch.equal(masked, again.test_set.tensors[1]) and torch.equal(noisy, again.test_set.tensors[2])
    assert 0 <= noisy.min() and noisy.max() <= 1
    assert len(data.train_set) == 30


def test_query_corruptions_follow_their_definitions():
    memories = torch.rand(200, 400)
    masked = mask_queries(memories, torch.Generator().manual_seed(0))
    kept = masked != 0
    assert 0.45 < kept.float().mean() < 0.55  # dropout 0.5 of the pixels ...
    torch.testing.assert_close(masked[kept], 2 * memories[kept])  # ... the survivors doubled
    noisy = noisy_queries(memories, torch.Generator().manual_seed(0), sigma=0.2)
    noise = torch.randn(memories.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    torch.testing.assert_close(noisy, (memories + noise).abs().clamp(0, 1))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_memories": 1}, "num_memories must be >= 2"),
    ({"num_memories": 5000}, "num_memories=5000 exceeds the 1797 training images of 'digits'"),
    ({"source": "imagenet"}, "memory source must be one of"),
    ({"noise_std": -1.0}, "noise_std must be >= 0, got -1.0"),
])
def test_bad_memory_sets(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MemoryDataModule(**kwargs).setup()


def test_retrieval_equals_the_plain_functions():
    """The module's retrieval (with and without Phi) is ``zoo.hopfield.retrieval.retrieve``; its weights
    are the last step's, whose support is the metastable state."""
    torch.manual_seed(0)
    model = UHopPlus(in_dim=64, feature_dim=32, beta=0.5, steps=3, separations=("softmax", "entmax15"))
    memories, queries = torch.rand(20, 64), torch.rand(7, 64)
    model.set_memories(memories)
    for separation in ("softmax", "sparsemax", "entmax15"):
        for use_map in (False, True):
            retrieved, weights = model.retrieve(queries, separation, use_map)
            expected = retrieve(queries, memories, 0.5, separation, feature_map=model.feature_map if use_map else None,
                                steps=3)
            torch.testing.assert_close(retrieved, expected)
            torch.testing.assert_close(weights.sum(-1), torch.ones(7))
    metrics, _ = model.retrieval_metrics(memories, memories, "sparsemax", False, beta=100.0)
    assert metrics["success"].mean() == 1 and metrics["metastable"].mean() == 1  # stored patterns are fixed points


def test_fit_raises_the_minimum_separation_and_test_reports_every_cell(tmp_path):
    """Stage I through the real CLI (50 memories, 20 epochs), then ``test`` from the last checkpoint."""
    cli = run_cli("fit", *quiet(tmp_path, "--trainer.max_epochs=20", "--data.num_memories=50"))
    model, memories = cli.model, cli.datamodule.memories
    assert min_separation(memories, model.feature_map) > 2 * min_separation(memories)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    losses = [float(r["val/separation_loss"]) for r in rows if r.get("val/separation_loss")]
    assert len(losses) == 20 and losses[-1] < losses[0]
    assert any(r.get("train/loss") for r in rows)

    cli = run_cli("test", *quiet(tmp_path, "--data.num_memories=50", "--ckpt_path=last"))
    metrics = cli.trainer.callback_metrics
    for query in ("masked", "noisy"):
        for separation in ("softmax", "sparsemax", "entmax15"):
            for variant in ("plain", "uhop"):
                for name in ("sse", "success", "metastable"):
                    assert torch.isfinite(metrics[f"test/{query}/{separation}/{variant}/{name}"])
    # softmax mixes every memory; sparse maps keep small metastable states
    assert metrics["test/masked/sparsemax/plain/metastable"] < metrics["test/masked/softmax/plain/metastable"]
    assert (Path(cli.trainer.log_dir) / "retrieval.png").stat().st_size > 1000


def test_checkpoint_keeps_the_memory_set_and_loads_weights_only(tmp_path):
    cli = run_cli("fit", *quiet(tmp_path, "--trainer.max_epochs=2", "--data.num_memories=20"))
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    torch.load(checkpoint, weights_only=True)
    loaded = UHopPlus.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    torch.testing.assert_close(loaded.memories, cli.datamodule.memories.cpu())
    queries = cli.datamodule.test_set.tensors[1].cpu()
    torch.testing.assert_close(loaded.retrieve(queries)[0], cli.model.cpu().retrieve(queries)[0])


def test_bad_model_input():
    model = UHopPlus(in_dim=64)
    with pytest.raises(ConfigError, match="no memory set"):
        model.retrieve(torch.rand(2, 64))
    with pytest.raises(ShapeError, match=r"memories must have shape \[M >= 2, 64\], got \[10, 784\]"):
        model.set_memories(torch.rand(10, 784))
    model.set_memories(torch.rand(10, 64))
    with pytest.raises(ShapeError, match=r"queries must have shape \[\*, 64\], got \[2, 63\]"):
        model.retrieve(torch.rand(2, 63))
    with pytest.raises(ConfigError, match="beta must be > 0, got -1"):
        model.retrieve(torch.rand(2, 64), beta=-1)
    for kwargs, message in [({"beta": 0.0}, "beta must be > 0"), ({"beta": float("inf")}, "beta must be finite"), ({"alpha": 2.5}, r"alpha must lie in \[1, 2\]"),
                            ({"separations": ("max",)}, "separations must be a non-empty list"),
                            ({"steps": 0}, "steps must be >= 1"), ({"tau": 0.0}, "tau must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            UHopPlus(**kwargs)


def test_cli_names_a_width_mismatch_in_one_line(tmp_path, capsys):
    from zoo.core.cli import main

    with pytest.raises(SystemExit):
        main(["fit", *quiet(tmp_path, "--model.in_dim=784", "--trainer.fast_dev_run=1")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "memories must have shape [M >= 2, 784], got [100, 64]" in err[0], err


def test_shipped_feature_map_reproduces_its_recorded_retrieval():
    import zoo
    from zoo.core.registry import read_manifest

    model = zoo.load_pretrained("uhop-digits")
    recorded = read_manifest()["uhop-digits"]["metrics"]
    data = MemoryDataModule(num_memories=100, noise_std=0.5, seed=0)  # configs/hopfield/uhop_digits.yaml
    data.setup()
    torch.testing.assert_close(model.memories, data.memories)
    targets, masked, noisy = data.test_set.tensors
    with torch.no_grad():
        for name, queries in (("masked", masked), ("noisy", noisy)):
            for variant, use_map in (("plain", False), ("uhop", True)):
                metrics, _ = model.retrieval_metrics(queries, targets, "softmax", use_map)
                for metric in ("sse", "success"):
                    key = f"test/{name}/softmax/{variant}/{metric}"
                    assert metrics[metric].mean().item() == pytest.approx(recorded[key], abs=1e-4), key


@pytest.mark.parametrize("source, width, shape", [("mnist", 784, (1, 28, 28)), ("cifar10", 3072, (3, 32, 32))])
def test_memory_sets_from_mnist_and_cifar_files(source, width, shape, tmp_path):
    """The memory set of the on-disk formats: the exact training images, flattened, in [0, 1]."""
    from tests.data_modules.test_data_modules import write_cifar, write_mnist

    if source == "mnist":
        (train_images, _), _ = write_mnist(tmp_path)
        images = torch.as_tensor(train_images, dtype=torch.float32).flatten(1) / 255
    else:
        written = write_cifar(tmp_path, 10)
        images = torch.cat([torch.as_tensor(written[f"data_batch_{i}"], dtype=torch.float32) for i in range(1, 6)]) / 255
    data = MemoryDataModule(source=source, data_dir=str(tmp_path), num_memories=12, seed=0)
    data.setup()
    assert data.memories.shape == (12, width) and data.image_shape == shape
    for memory in data.memories:  # every memory is one of the training images
        assert (images - memory).abs().amax(-1).min() < 1e-6
    model = UHopPlus(in_dim=width, feature_dim=32)
    model.set_memories(data.memories)
    assert model.retrieve(data.test_set.tensors[1])[0].shape == (12, width)
