"""Conditional DiT samples judged offline: classifier accuracy and diversity per CFG scale, and
DDIM vs DDPM time and quality, on scikit-learn's digits.

A sample of class y counts as correct when the zoo's shipped digit classifier (``digits-cnn``,
99.4 % test accuracy on real digits) predicts y. Diversity is the mean pairwise L2 distance
between samples of the same class, divided by the same quantity for real training digits of
that class (1 = as varied as the data; 0 = one image repeated). FID is torchmetrics'
``FrechetInceptionDistance`` with ``digits-cnn``'s penultimate layer (128 features) as the feature
network (``zoo.dit.metrics.ImageFeatures``; no Inception weights), samples against the real
training digits; the first row is the floor: the real test digits against the same reference.
For a latent DiT (``autoencoder`` set) a second row gives its ceiling: the real test digits
through the autoencoder (encode, decode), scored like samples. Same process, same threads.

    python benchmarks/dit/samples.py --ckpt runs/dit/digits_tiny/checkpoints/last.ckpt
        [--per-class 50] [--scales 1 1.5 3 4] [--ddpm]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

import zoo
from data_modules import DigitsDataModule
from zoo.core.registry import build_from_checkpoint, verify_checkpoint
from zoo.dit.conditional import ConditionalDiT
from zoo.dit.metrics import ImageFeatures


def diversity(images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Mean pairwise L2 distance within each class."""
    out = {}
    for c in labels.unique().tolist():
        flat = images[labels == c].flatten(1)
        distances = torch.cdist(flat, flat)
        n = len(flat)
        out[c] = (distances.sum() / (n * (n - 1))).item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a ConditionalDiT or LatentImageDiT checkpoint (EMA weights are used)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 3.0, 4.0])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--ddpm", action="store_true", help="also sample with DDPM (all steps) at the first scale > 1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_from_checkpoint(verify_checkpoint(args.ckpt), source=args.ckpt).eval()
    if not isinstance(model, ConditionalDiT):
        parser.error(f"{args.ckpt} holds a {type(model).__name__}, not a ConditionalDiT or LatentImageDiT")
    classifier = zoo.load_pretrained("digits-cnn")
    data = DigitsDataModule(normalize=True)
    data.setup()
    mean, std = data.mean, data.std  # the classifier's input scaling (training split statistics)
    raw = DigitsDataModule(normalize=False)
    raw.setup()
    real_images, real_labels = raw.train_set.tensors
    real = diversity(real_images, real_labels)
    fid = FrechetInceptionDistance(feature=ImageFeatures(classifier, mean, std), reset_real_features=False)
    fid.update(real_images, real=True)
    fid.update(raw.test_set.tensors[0], real=False)
    floor = fid.compute().item()
    test_images, test_labels = raw.test_set.tensors
    ceiling = None
    if model.autoencoder is not None:  # the latent model's ceiling: test digits through the autoencoder
        recon = model.decode(model.encode(test_images))
        with torch.no_grad():
            recon_accuracy = (classifier((recon - mean) / std).argmax(-1) == test_labels).float().mean().item()
        fid.reset()
        fid.update(recon, real=False)
        ceiling = {"fid": round(fid.compute().item(), 3), "accuracy": round(recon_accuracy, 4)}

    labels = torch.arange(10).repeat_interleave(args.per_class)
    runs = [("DDIM", args.steps, s) for s in args.scales]
    if args.ddpm:
        runs.append(("DDPM", 0, next((s for s in args.scales if s > 1), args.scales[0])))
    rows = []
    for sampler, steps, scale in runs:
        start = time.perf_counter()
        samples = model.sample(labels, cfg_scale=scale, steps=steps, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        with torch.no_grad():
            predicted = classifier((samples - mean) / std).argmax(-1)
        accuracy = (predicted == labels).float().mean().item()
        ours = diversity(samples, labels)
        relative = sum(ours[c] / real[c] for c in ours) / len(ours)
        fid.reset()
        fid.update(samples, real=False)
        rows.append({"sampler": sampler, "steps": steps or model.hparams.num_steps, "cfg_scale": scale,
                     "accuracy": round(accuracy, 4), "diversity": round(relative, 3),
                     "fid": round(fid.compute().item(), 3), "seconds": round(seconds, 2)})

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.per_class} samples per class; checkpoint {args.ckpt}\n")
    print("| sampler | steps | CFG scale | classifier accuracy | diversity (real = 1) | FID (digits-cnn) | seconds |")
    print("|---|---|---|---|---|---|---|")
    print(f"| real test digits | | | | | {floor:.3f} | |")
    if ceiling:
        print(f"| real test digits through the autoencoder | | | {ceiling['accuracy']:.3f} | | {ceiling['fid']:.3f} | |")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['cfg_scale']} | {r['accuracy']:.3f} | {r['diversity']:.3f} "
              f"| {r['fid']:.3f} | {r['seconds']:.1f} |")
    print(json.dumps({"benchmark": "dit_samples", "checkpoint": args.ckpt, "per_class": args.per_class,
                      "fid_real_test": round(floor, 3), "autoencoder_ceiling": ceiling, "runs": rows}))


if __name__ == "__main__":
    main()
