"""Convolutional KL autoencoder (``zoo.dit.autoencoder``, ``ImageAutoencoder``) and the latent
``LatentImageDiT`` built on it: the KL against a loop, shapes and factors, the latent scale, that it
learns, checkpoints that carry the autoencoder, and bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning
import pytest
import torch

from tests.conftest import ROOT, run_cli
from zoo.core.errors import CheckpointError, ConfigError, ShapeError
from zoo.dit.autoencoder import ConvAutoencoder, ResBlock
from zoo.dit.autoencoder_module import ImageAutoencoder
from zoo.dit.latent_image import LatentImageDiT

CONFIG = "configs/dit/digits_autoencoder.yaml"


def quiet(root: Path, *extra: str, config: str = CONFIG) -> list[str]:
    return ["--config", config, f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *extra]


def save_autoencoder(model: ImageAutoencoder, path: Path) -> Path:
    """What ``ModelCheckpoint`` keeps that loading needs (weights, hyperparameters, version)."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_kl_equals_a_float64_loop():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    expected = []
    for b in range(3):
        total = 0.0
        for m, lv in zip(mean[b].flatten().tolist(), logvar[b].flatten().tolist()):
            # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2
            s = math.exp(lv / 2)
            total += math.log(1 / s) + (s * s + m * m) / 2 - 0.5
        expected.append(total)
    torch.testing.assert_close(ConvAutoencoder.kl(mean, logvar), torch.tensor(expected, dtype=torch.float64))
    assert ConvAutoencoder.kl(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).item() == 0.0


@pytest.mark.parametrize("widths, size, latent", [((16,), 8, 8), ((16, 32), 8, 4), ((8, 8, 8), 28, 7), ((8, 16, 32), 32, 8)])
def test_shapes_and_downsampling_factor(widths, size, latent):
    net = ConvAutoencoder(in_channels=3, latent_channels=4, widths=widths)
    assert net.factor == 2 ** (len(widths) - 1) and net.latent_shape(size) == (4, latent, latent)
    x = torch.randn(2, 3, size, size)
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (2, 4, latent, latent)
    recon, m, _ = net(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and torch.equal(m, mean)


def test_residual_blocks_start_as_the_identity():
    block = ResBlock(16)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(block(x), x)


def test_latent_scale_is_applied_both_ways():
    torch.manual_seed(0)
    net = ConvAutoencoder(1, 2, (8, 8)).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    net.latent_scale.fill_(0.5)
    torch.testing.assert_close(net.encode_latent(x), 0.5 * net.encode(x)[0])
    z = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(net.decode_latent(z), net.decode(2 * z))
    assert "latent_scale" in net.state_dict()


@pytest.mark.parametrize("make, error, match", [
    (lambda: ConvAutoencoder(1, 2, ()), ConfigError, r"non-empty list of positive widths, got .*widths=\[\]"),
    (lambda: ConvAutoencoder(0, 2, (8,)), ConfigError, "in_channels=0"),
    (lambda: ConvAutoencoder(1, 2, (8, 8, 8)).latent_shape(10), ConfigError,
     r"image size 10 is not divisible by the downsampling factor 4"),
    (lambda: ConvAutoencoder(1, 2, (8, 8)).encode(torch.zeros(1, 3, 8, 8)), ShapeError,
     r"images must have shape \[B, 1, H, W\] with H and W divisible by 2, got \[1, 3, 8, 8\]"),
    (lambda: ConvAutoencoder(1, 2, (8, 8)).decode(torch.zeros(1, 4, 4, 4)), ShapeError,
     r"latents must have shape \[B, 2, h, w\], got \[1, 4, 4, 4\]"),
    (lambda: ImageAutoencoder(input_size=9), ConfigError, "image size 9 is not divisible"),
])
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_fit_lowers_the_error_sets_the_latent_scale_and_test_draws_reconstructions(tmp_path):
    cli = run_cli("fit", *quiet(tmp_path, "--trainer.max_epochs=3"))
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    mse = [float(r["val/mse"]) for r in rows if r.get("val/mse")]
    assert len(mse) == 3 and mse[-1] < 0.7 * mse[0], mse
    # latent_scale = 1 / std of the validation posterior means, recomputed here
    model = cli.model.eval()
    dm = cli.datamodule
    means = torch.cat([model.net.encode(x * 2 - 1)[0].flatten() for x, _ in dm.val_dataloader()])
    torch.testing.assert_close(model.net.latent_scale, 1 / means.double().std().float(), rtol=1e-4, atol=0)
    latents = torch.cat([model.encode(x) for x, _ in dm.val_dataloader()])
    assert abs(latents.std().item() - 1) < 1e-3
    tested = run_cli("test", *quiet(tmp_path, "--ckpt_path=last"))
    assert (Path(tested.trainer.log_dir) / "reconstructions.png").stat().st_size > 1000
    # test/psnr is the PSNR of the whole test set's squared error (images in [0, 1]: a quarter of [-1, 1]'s)
    test_images = torch.cat([x for x, _ in dm.test_dataloader()])
    with torch.no_grad():
        x = test_images * 2 - 1
        recon = model.net.decode(model.net.encode(x)[0])  # unclamped, as logged
    expected = 10 * torch.log10(4 / (recon - x).double().square().mean())
    assert abs(float(tested.trainer.callback_metrics["test/psnr"]) - expected.item()) < 1e-3
    # only fitting sets the scale: validate on the saved checkpoint leaves it as saved
    validated = run_cli("validate", *quiet(tmp_path, "--ckpt_path=last"))
    assert torch.equal(validated.model.net.latent_scale, model.net.latent_scale)


def test_latent_dit_trains_on_latents_and_decodes_its_samples(tmp_path):
    torch.manual_seed(0)
    ae = ImageAutoencoder(latent_channels=2, widths=[8, 8])
    ae.net.latent_scale.fill_(0.7)
    path = save_autoencoder(ae, tmp_path / "ae.ckpt")
    model = LatentImageDiT(patch_size=1, num_steps=20, sample_steps=4, autoencoder=str(path))
    assert model.net.input_size == 4 and model.net.in_channels == 2
    assert not any(p.requires_grad for p in model.autoencoder.parameters())
    assert all(k.startswith("net.") for k, p in model.named_parameters() if p.requires_grad)
    torch.testing.assert_close(model.encode(torch.rand(2, 1, 8, 8)).shape, torch.Size([2, 2, 4, 4]))
    images = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(model.encode(images), ae.encode(images))
    model.eval()
    labels = torch.tensor([1, 2, 3])
    samples = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    # the same latent sampling, decoded by hand: sample() = decode(latent sampler)
    from zoo.dit.diffusion import guided
    z = model.diffusion.ddim_sample(guided(model.ema, 1.5, model.ema.null_class), (3, 2, 4, 4), 4,
                                   generator=torch.Generator().manual_seed(0), clip_x0=False, y=labels)
    torch.testing.assert_close(samples, ae.decode(z))
    # a checkpoint of the latent DiT is self-contained: with the autoencoder's file gone it still
    # loads (weights_only) and samples the same
    assert model.hparams.autoencoder_arch == {"in_channels": 1, "latent_channels": 2, "widths": [8, 8]}
    ckpt = tmp_path / "dit.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    path.unlink()
    loaded = LatentImageDiT.load_from_checkpoint(ckpt, weights_only=True).eval()
    torch.testing.assert_close(loaded.sample(labels, generator=torch.Generator().manual_seed(0)), samples)


def test_latent_dit_bad_autoencoder(tmp_path):
    with pytest.raises(CheckpointError, match="'nowhere.ckpt' does not exist"):
        LatentImageDiT(autoencoder="nowhere.ckpt")
    with pytest.raises(CheckpointError, match="'digits-cnn': .* is not an ImageAutoencoder checkpoint"):
        LatentImageDiT(autoencoder="digits-cnn")
    path = save_autoencoder(ImageAutoencoder(in_channels=3, widths=[8, 8]), tmp_path / "rgb.ckpt")
    with pytest.raises(ConfigError, match="encodes 3-channel images, but in_channels is 1"):
        LatentImageDiT(autoencoder=str(path))
    path = save_autoencoder(ImageAutoencoder(widths=[8, 8, 8]), tmp_path / "f4.ckpt")
    with pytest.raises(ConfigError, match="image size 10 is not divisible by the downsampling factor 4"):
        LatentImageDiT(autoencoder=str(path), input_size=10)


def test_shipped_autoencoder_keeps_digits_recognisable():
    """``digits-ae`` (2 x 4 x 4 latents for 8x8 digits): test digits after encode -> decode keep
    their PSNR (registered: 29.8 dB) and the zoo's classifier still reads them (measured 99.4 %)."""
    import zoo
    from data_modules import DigitsDataModule

    ae, classifier = zoo.load_pretrained("digits-ae"), zoo.load_pretrained("digits-cnn")
    raw, normalized = DigitsDataModule(normalize=False), DigitsDataModule()
    raw.setup()
    normalized.setup()
    images, labels = raw.test_set.tensors
    recon = ae.decode(ae.encode(images))
    psnr = 10 * torch.log10(1 / (recon - images).square().mean())
    with torch.no_grad():
        accuracy = (classifier((recon - normalized.mean) / normalized.std).argmax(-1) == labels).float().mean()
    assert psnr > 28 and accuracy > 0.97, (psnr, accuracy)


def test_files_land_in_the_run_folder_even_without_a_logger(tmp_path, monkeypatch):
    """Under ``fast_dev_run`` Lightning has no logger and ``trainer.log_dir`` is None: the
    reconstructions go to ``default_root_dir``, not the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = str(ROOT / CONFIG)
    cli = run_cli("fit", *quiet(tmp_path / "run", "--trainer.fast_dev_run=1", config=config))
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert (tmp_path / "run" / "reconstructions.png").is_file() and not list(cwd.iterdir())


def test_latent_dit_on_mnist_files_through_the_cli(tmp_path):
    """The MNIST route end to end on written IDX files: fit the autoencoder config (two batches),
    then fit and sample the MNIST latent DiT config on its 4 x 7 x 7 latents (``--model.autoencoder``)."""
    from tests.data_modules.test_data_modules import write_mnist

    write_mnist(tmp_path / "data")
    data = [f"--data.data_dir={tmp_path / 'data'}", "--data.batch_size=4"]
    run_cli("fit", *quiet(tmp_path / "ae", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                          "--trainer.limit_val_batches=2", *data, config="configs/dit/mnist_autoencoder.yaml"))
    ae = tmp_path / "ae" / "checkpoints" / "last.ckpt"
    dit_args = [f"--model.autoencoder={ae}", "--model.sample_steps=2", *data]
    cli = run_cli("fit", *quiet(tmp_path / "dit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                                "--trainer.limit_val_batches=1", *dit_args, config="configs/dit/mnist_latent.yaml"))
    assert cli.model.net.input_size == 7 and cli.model.net.in_channels == 4
    predicted = run_cli("predict", *quiet(tmp_path / "dit", "--ckpt_path=last", "--trainer.limit_predict_batches=1",
                                          *dit_args, config="configs/dit/mnist_latent.yaml"))
    samples = torch.load(Path(predicted.trainer.log_dir) / "samples.pt", weights_only=True)["samples"]
    assert samples.shape[1:] == (1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
