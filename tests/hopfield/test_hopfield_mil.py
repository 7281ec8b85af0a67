"""Hopfield pooling for multiple-instance learning: digit bags, the per-bag separation loss,
set invariances of the model, and learning through the CLI."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from data_modules.bags import DigitBagsDataModule
from tests.conftest import run_cli
from zoo.core.errors import ConfigError
from zoo.hopfield.mil import HopfieldMIL, bag_separation_loss
from zoo.hopfield.retrieval import separation_loss

CONFIGS = ("configs/hopfield/mil_digits.yaml", "configs/hopfield/mil_digits_uhop.yaml")


def test_bags_hold_real_digits_and_are_labelled_by_the_target():
    data = DigitBagsDataModule(target=3, num_train=40, num_val=10, num_test=30, seed=1)
    data.setup()
    digits = load_digits()
    label_of = {bytes((torch.as_tensor(img, dtype=torch.float32) / 16).flatten().numpy()): int(y)
                for img, y in zip(digits.images, digits.target)}
    instances, padding, labels = data.test_set.tensors
    assert instances.shape[0] == 30 and instances.shape[2] == 64
    assert ((~padding).sum(1) >= 2).all() and (instances[padding] == 0).all()
    for bag, pad, label in zip(instances, padding, labels):
        members = [label_of[bytes(x.numpy())] for x in bag[~pad]]  # every instance is a digit image ...
        assert label == float(3 in members)  # ... and the bag label says whether a 3 is among them
    again = DigitBagsDataModule(target=3, num_train=40, num_val=10, num_test=30, seed=1)
    again.setup()
    assert torch.equal(again.test_set.tensors[0], instances)
    assert 0.2 < data.train_set.tensors[2].mean() < 0.9


def test_bag_separation_loss_is_the_per_bag_loss_of_real_instances():
    torch.manual_seed(0)
    features = torch.randn(4, 7, 5, dtype=torch.float64)
    padding = torch.zeros(4, 7, dtype=torch.bool)
    padding[1, 4:] = True
    padding[2, 2:] = True
    padding[3, 1:] = True  # a single instance: left out
    expected = torch.stack([separation_loss(features[b][~padding[b]], tau=0.2) for b in range(3)]).mean()
    torch.testing.assert_close(bag_separation_loss(features, padding, tau=0.2), expected)


def test_predictions_ignore_padding_and_instance_order():
    torch.manual_seed(0)
    model = HopfieldMIL(separation="sparsemax").eval()
    bag = torch.rand(1, 6, 64)
    padded = torch.cat([bag, torch.rand(1, 3, 64)], dim=1)
    padding = torch.tensor([[False] * 6 + [True] * 3])
    shuffled = bag[:, torch.randperm(6)]
    none = torch.zeros(1, 6, dtype=torch.bool)
    reference = model(bag, none)
    torch.testing.assert_close(model(padded, padding), reference)
    torch.testing.assert_close(model(shuffled, none), reference)


@pytest.mark.parametrize("config", CONFIGS)
def test_mil_learns_through_the_cli(config, tmp_path):
    cli = run_cli("fit", "--config", config, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=8",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")
    if cli.model.hparams.separation_weight > 0:
        assert "train/separation" in cli.trainer.logged_metrics
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    assert results["test/auroc"] > 0.85, results


def test_bad_mil_settings():
    with pytest.raises(ConfigError, match="separation must be one of"):
        HopfieldMIL(separation="hardmax")
    with pytest.raises(ConfigError, match="separation_weight must be >= 0, got -1"):
        HopfieldMIL(separation_weight=-1)
    with pytest.raises(ConfigError, match="target must be a digit 0-9, got 12"):
        DigitBagsDataModule(target=12)


@pytest.mark.parametrize("name", ["mil-digits-hopfield", "mil-digits-uhop"])
def test_shipped_mil_models_reproduce_their_recorded_auroc(name):
    from torchmetrics.functional.classification import binary_auroc

    import zoo
    from zoo.core.registry import read_manifest

    model = zoo.load_pretrained(name)
    data = DigitBagsDataModule(target=9, bag_size=10, num_train=200)  # the configs' data
    data.setup()
    instances, padding, labels = data.test_set.tensors
    with torch.no_grad():
        auroc = binary_auroc(torch.sigmoid(model(instances, padding)), labels.long()).item()
    assert auroc == pytest.approx(read_manifest()[name]["metrics"]["test/auroc"], abs=1e-4)
