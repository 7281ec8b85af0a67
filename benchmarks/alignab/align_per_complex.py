"""AlignAb stage 3 in AbDPO's per-antigen setting: align the co-design model on a few complexes' own designs and
measure the designs of those same complexes, before and after (no held-out complexes: this checks the
optimisation itself, not generalisation).

The first ``--complexes`` training complexes of the config's split; single-objective E_Rep, ``--rounds`` rounds of
16 designs per complex at temperature 1, ``--passes`` updates per round over one batch holding all of them, DPO at
``--level`` (residue: AbDPO's per-residue preferences; design: one per pair); before and after, 16 designs per
complex from one fixed sampling generator (20 respaced steps), scored with the same rotamer library and energy
PROXY (not Rosetta).

    python benchmarks/alignab/align_per_complex.py --level residue [--level design] [--rounds 3] [--lr 1e-4]

Prints the mean and median E_Rep per complex before and after, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from lightning.pytorch import Trainer, seed_everything

from data_modules.complexes import ComplexDataModule, NamedTensorSet
from zoo.alignab import CoDesignAlignment
from zoo.alignab.codesign_diffusion import LoopState
from zoo.alignab.preferences import SideChainLibrary


def repulsion(model: CoDesignAlignment, dm: ComplexDataModule, designs: int, steps: int) -> torch.Tensor:
    """E_Rep ``[complexes, designs]`` of seeded designs of every training loop of ``dm``."""
    rows = list(range(len(dm.train_set)))
    batch = dm.train_set.__getitems__(rows)
    _, designed, _ = model.policy.design(batch, designs, torch.Generator().manual_seed(7), steps=steps)
    out = []
    for b in rows:
        part = LoopState(*(x[b * designs:(b + 1) * designs] for x in (designed.aa, designed.pos, designed.rot)))
        out.append(model.score({k: v[b] for k, v in batch.items()}, part)["rep"])
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/antibody")
    parser.add_argument("--level", default="residue", choices=["residue", "design"])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--complexes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*skipped.*")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, verbose=False)
    dm = ComplexDataModule(data_dir=args.data, cache_dir="runs/alignab/complex_cache", patch_size=64,
                           design_cdrs=["H3"], eval_cdr="H3", max_loop_length=30, batch_size=args.complexes, seed=0)
    dm.setup()
    full = dm.train_set
    dm.train_set = NamedTensorSet(full.names, *[t[:args.complexes] for t in full.tensors])
    model = CoDesignAlignment(method="single", objectives=["rep"], level=args.level, beta=5.0, designs_per_complex=16,
                              sample_steps=20, temperature_start=1.0, temperature_end=1.0, passes=args.passes,
                              timesteps=2, lr=args.lr, seed=args.seed)
    names = set(dm.splits["train"])
    library = SideChainLibrary.from_complexes([c for c in dm.complexes if c.name in names], 6, seed=args.seed)
    model.library_local.copy_(library.local)
    model.library_mask.copy_(library.mask)
    before = repulsion(model, dm, 16, 20)
    start = time.perf_counter()
    Trainer(max_epochs=args.rounds, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            default_root_dir="runs/alignab/align_per_complex").fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    after = repulsion(model, dm, 16, 20)
    complexes = [dm.complexes[int(c)].name for c in dm.train_set.tensors[full.names.index("complex")][:, 0]]
    print(f"{'complex':<8} {'mean before':>12} {'mean after':>11} {'median before':>14} {'median after':>13}")
    for i, name in enumerate(complexes):
        print(f"{name:<8} {before[i].mean():>12.1f} {after[i].mean():>11.1f} {before[i].median():>14.1f} "
              f"{after[i].median():>13.1f}")
    print(json.dumps({"benchmark": "alignab_align_per_complex", "level": args.level, "lr": args.lr,
                      "rounds": args.rounds, "passes": args.passes, "complexes": complexes, "seconds": seconds,
                      "rep_before": before.tolist(), "rep_after": after.tolist(), "threads": args.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
