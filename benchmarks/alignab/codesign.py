"""AlignAb stage 2 on held-out complexes: CDR-H3 co-design by ``CoDesignDiffusion`` with and without LM
guidance (one checkpoint per training seed) against the native loop, random sequences on the native backbone
and the stage-1 LM alone filling the masked loop, in one pass (argmax at every masked position) or iteratively
(the most confident masked position first, then the LM is re-run on the partly filled loop, until none is left).

    python benchmarks/alignab/codesign.py --lm runs/alignab/codesign_cdrs_s{0,1,2}/checkpoints/last.ckpt \
        --nolm runs/alignab/codesign_cdrs_nolm_s{0,1,2}/checkpoints/last.ckpt [--samples 4] [--threads 1]
        [--data ../shared/data/antibody] [--out docs/alignab] [--first-seed 0]

Held-out set: the test split of ``configs/alignab/codesign_cdrs.yaml`` (split by complex, seed 0), CDR-H3.
Per design: amino-acid recovery (AAR), C-alpha RMSD after superposition on the antibody framework of the patch
(A), ``ca_bonds`` (the share of consecutive loop C-alpha pairs 3.3-4.3 A apart: is it a chain?), the energy PROXY (``zoo.alignab.energy``, NOT Rosetta) of the full complex with the designed loop --
CDR-H3-antigen attraction (E_nonRep), repulsion (E_Rep) and CDR-H3 E_total -- with the loop's side chains
packed by FASPR (``pyfaspr``) when installed, else backbone only; and nature-likeness, the stage-1 LM's
pseudo-log-likelihood per loop residue (each loop residue masked in turn, the rest of the heavy chain given).
The baselines get the same treatment on the native backbone (the native loop repacked by FASPR too, so that it
is scored like the designs; its crystal side chains are reported apart). Per model: each metric averaged over
designs and complexes, then mean and sd over training seeds; designs per second of sampling (1 thread).

Writes ``codesign.json`` and ``codesign_loops.png`` (designed loops over the native one) under ``--out``;
prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from data_modules.complexes import CDR_NAMES, ComplexDataModule, read_pdb_complex, write_pdb
from data_modules.residues import AMINO_ACIDS
from zoo.alignab.codesign_module import CoDesignDiffusion, faspr_binary
from zoo.alignab.energy import score_complex
from zoo.core.plots import save_figure
from zoo.core.registry import load_pretrained

METRICS = ("aar", "rmsd", "ca_bonds", "cdr_ag_nonrep", "cdr_ag_rep", "cdr_total", "pll")


def ca_bonds(ca: torch.Tensor) -> float:
    """Share of consecutive loop C-alpha pairs ``[n, 3]`` 3.3-4.3 A apart (a trans peptide puts them 3.8 A)."""
    gaps = (ca[1:] - ca[:-1]).norm(dim=-1)
    return float(((gaps > 3.3) & (gaps < 4.3)).double().mean())


def loop_pll(lm, sequences: list[str], loops: list[list[int]]) -> list[float]:
    """Mean over loop positions of log p(x_i | the rest of the sequence, x_i masked)."""
    tokenizer = lm.tokenizer
    out = []
    with torch.no_grad():
        for sequence, loop in zip(sequences, loops):
            tokens = tokenizer.batch_encode([sequence]).repeat(len(loop), 1)
            rows = torch.arange(len(loop))
            cols = torch.tensor(loop) + 1  # after <cls>
            truth = tokens[rows, cols].clone()
            tokens[rows, cols] = tokenizer.mask_id
            logits = lm(tokens)[rows, cols].log_softmax(-1)
            out.append(float(logits.gather(1, truth[:, None]).mean()))
    return out


def lm_fill_iterative(lm, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The LM alone, iterative decoding of the masked loop ``[B, K]`` (-1 outside the loop), sequence only: run
    the LM on the heavy and light variable domains with the loop masked, fill the one masked position whose
    best amino acid (of the 20) has the highest probability with that amino acid, re-run, until no masked loop
    position is left (greedy, deterministic; one LM call per loop residue)."""
    tokenizer = lm.tokenizer
    first = tokenizer.first_residue_id  # residue ids follow in AMINO_ACIDS order
    tokens, index, design = batch["lm_tokens"].clone(), batch["lm_index"], batch["design"]
    b, chains, length = tokens.shape
    flat = tokens.reshape(b, chains * length)
    with torch.no_grad():
        for row in range(b):
            while True:
                masked = torch.nonzero(flat[row] == tokenizer.mask_id).flatten()
                if len(masked) == 0:
                    break
                logits = lm(flat[row].reshape(chains, length)).reshape(chains * length, -1)
                probs = logits[masked].softmax(-1)[:, first:first + len(AMINO_ACIDS)]
                best, aa = probs.max(-1)
                pick = int(best.argmax())
                flat[row, masked[pick]] = first + aa[pick]
    picked = (flat.gather(1, index.clamp_min(0)) - first).clamp(0, len(AMINO_ACIDS) - 1)
    return torch.where(design & (index >= 0), picked, torch.full_like(picked, -1))


class Scorer:
    """Energies and nativeness of a designed loop placed into a full complex."""

    def __init__(self, lm, folder: Path, pack: bool) -> None:
        self.lm, self.folder, self.pack = lm, folder, pack and faspr_binary() is not None

    @staticmethod
    def heavy_domain(complex_, sequence: str) -> tuple[str, list[int], torch.Tensor]:
        heavy = torch.nonzero(complex_.chain == 0).flatten()
        h3 = torch.nonzero(complex_.cdr[heavy] == 3).flatten()
        end = min(len(heavy), int(h3[-1]) + 12)
        start = max(0, end - 160)
        domain = heavy[start:end]
        return "".join(sequence[i] for i in domain.tolist()), (h3 - start).tolist(), domain

    def energies(self, path: Path, complex_, loop: torch.Tensor) -> dict[str, float]:
        design = read_pdb_complex(path, complex_)
        energy = score_complex(design.coords, design.aa, design.atom_mask, design.chain, loop, complex_.antigen_mask)
        return {k: float(getattr(energy, k)[0]) for k in ("cdr_ag_nonrep", "cdr_ag_rep", "cdr_total")}

    def on_backbone(self, complex_, sequence: str, name: str, repack: bool = True) -> dict[str, float]:
        """Energies of ``sequence`` on the native complex (loop side chains packed, or crystal when unchanged
        and not ``repack``) and its loop PLL."""
        loop = complex_.cdr_h3_mask
        index = torch.nonzero(loop).flatten()
        path = self.folder / f"{name}.pdb"
        mask = complex_.atom_mask.clone()
        if repack:
            mask[index, 4:] = False
        write_pdb(complex_, path, sequence, complex_.coords, mask)
        if repack and self.pack:
            CoDesignDiffusion.pack(path, complex_, index)
        domain_seq, h3, _ = self.heavy_domain(complex_, sequence)
        out = {**self.energies(path, complex_, loop), "pll": loop_pll(self.lm, [domain_seq], [h3])[0]}
        if repack and sequence == complex_.sequence():  # the packer checked on the native loop
            packed = read_pdb_complex(path, complex_)
            both = complex_.atom_mask[index, 4:] & packed.atom_mask[index, 4:]
            diff = (complex_.coords[index, 4:] - packed.coords[index, 4:])[both]
            out["side_chain_rmsd"] = float(diff.pow(2).sum(-1).mean().sqrt())
        return out


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", nargs="+", required=True, help="checkpoints trained with LM guidance (one per seed)")
    parser.add_argument("--nolm", nargs="+", required=True, help="checkpoints trained without LM guidance")
    parser.add_argument("--samples", type=int, default=4, help="designs per held-out loop per checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="../shared/data/antibody")
    parser.add_argument("--no-pack", action="store_true", help="score backbone-only loops (no FASPR)")
    parser.add_argument("--out", default="docs/alignab")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="training seed of the first checkpoint of each list (its designs are sampled with "
                             "generator seed 100 + training seed), so that seeds benchmarked apart match one run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    dm = ComplexDataModule(data_dir=args.data, cache_dir="runs/alignab/complex_cache", patch_size=64,
                           design_cdrs=list(CDR_NAMES), eval_cdr="H3", val_fraction=0.1, test_fraction=0.2, seed=0)
    dm.setup()
    batch = dm.test_set[list(range(len(dm.test_set)))]
    names = [dm.complexes[int(i)].name for i in batch["complex"][:, 0]]
    lm = load_pretrained("alignab-lm-oas")
    tmp = Path(tempfile.mkdtemp(prefix="codesign_"))
    scorer = Scorer(lm, tmp, not args.no_pack)
    per_complex: dict[str, dict[str, list[float]]] = {}

    def add(method: str, values: dict[str, float]) -> None:
        for k, v in values.items():
            per_complex.setdefault(method, {}).setdefault(k, []).append(v)

    # baselines on the native backbone
    generator = torch.Generator().manual_seed(0)
    lm_fill = CoDesignDiffusion.load_from_checkpoint(args.lm[0], map_location="cpu", weights_only=True).lm_fill(batch)
    lm_iterative = lm_fill_iterative(lm, batch)
    baseline_rows: dict[str, dict[str, list[float]]] = {}
    repacked_rmsd: list[float] = []
    for b, name in enumerate(names):
        complex_ = dm.complexes[int(batch["complex"][b, 0])]
        index = torch.nonzero(complex_.cdr_h3_mask).flatten()
        native = complex_.sequence()
        rows = {"native (crystal side chains)": [scorer.on_backbone(complex_, native, f"{name}_native", repack=False)],
                "native (loop repacked)": [scorer.on_backbone(complex_, native, f"{name}_native_rp")]}
        rows["random sequence, native backbone"] = []
        for s in range(args.samples):
            seq = list(native)
            for i in index.tolist():
                seq[i] = AMINO_ACIDS[int(torch.randint(0, 20, (), generator=generator))]
            seq = "".join(seq)
            r = scorer.on_backbone(complex_, seq, f"{name}_random{s}")
            r["aar"] = sum(seq[i] == native[i] for i in index.tolist()) / len(index)
            rows["random sequence, native backbone"].append(r)
        for method, fill, tag in (("LM alone (sequence only), native backbone", lm_fill, "lm"),
                                  ("LM alone, iterative decoding (sequence only), native backbone", lm_iterative,
                                   "lm_iter")):
            picked = fill[b][batch["design"][b]].tolist()
            seq = list(native)
            for i, a in zip(batch["index"][b][batch["design"][b]].tolist(), picked):
                seq[i] = AMINO_ACIDS[a]
            seq = "".join(seq)
            r = scorer.on_backbone(complex_, seq, f"{name}_{tag}")
            r["aar"] = sum(seq[i] == native[i] for i in index.tolist()) / len(index)
            rows[method] = [r]
        if "side_chain_rmsd" in rows["native (loop repacked)"][0]:
            repacked_rmsd.append(rows["native (loop repacked)"][0].pop("side_chain_rmsd"))
        for method, values in rows.items():
            for v in values:
                v.setdefault("aar", 1.0 if method.startswith("native") else v.get("aar"))
                v.setdefault("rmsd", 0.0)
                v.setdefault("ca_bonds", ca_bonds(complex_.coords[index, 1]))
            averaged = {k: mean([v[k] for v in values]) for k in METRICS}
            add(method, averaged)
            baseline_rows.setdefault(method, {})[name] = averaged

    # the models, one row per training seed
    results: dict[str, list[dict[str, float]]] = {}
    speed: dict[str, list[float]] = {}
    examples: dict[str, list] = {}
    for label, paths in (("diffusion + LM guidance", args.lm), ("diffusion, no LM guidance", args.nolm)):
        for seed, path in enumerate(paths):
            model = CoDesignDiffusion.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
            model.hparams.pack_side_chains = not args.no_pack
            start = time.perf_counter()
            native_state, designed, design = model.design(batch, args.samples, torch.Generator().manual_seed(100 + args.first_seed + seed))
            elapsed = time.perf_counter() - start
            speed.setdefault(label, []).append(design.shape[0] / elapsed)
            repeated = {k: v.repeat_interleave(args.samples, 0) for k, v in batch.items()}
            scores = model.evaluate(native_state, designed, design, repeated)
            per_seed: dict[str, list[float]] = {}
            for b, name in enumerate(names):
                complex_ = dm.complexes[int(batch["complex"][b, 0])]
                one = {k: v[b:b + 1] for k, v in batch.items()}
                rows = slice(b * args.samples, (b + 1) * args.samples)
                sub = type(designed)(designed.aa[rows], designed.pos[rows], designed.rot[rows])
                values = []
                for i in range(args.samples):
                    record = model.write_design(tmp, complex_, f"H3_{label[:6].strip()}{seed}", i, one, sub,
                                                design[rows], {k: v[rows] for k, v in scores.items()})
                    loop = complex_.cdr_h3_mask
                    sequence = read_pdb_complex(tmp / record["pdb"], complex_).sequence()
                    domain_seq, h3, _ = scorer.heavy_domain(complex_, sequence)
                    values.append({"aar": record["aar"], "rmsd": record["rmsd"],
                                   "ca_bonds": ca_bonds(sub.pos[i][design[rows][i]].double() * 10),
                                   **scorer.energies(tmp / record["pdb"], complex_, loop),
                                   "pll": loop_pll(lm, [domain_seq], [h3])[0]})
                    if seed == 0 and b < 3:
                        ca = (sub.pos[i][design[rows][i]] * 10).tolist()
                        examples.setdefault(name, {"native": (native_state.pos[b * args.samples][
                            design[b * args.samples]] * 10).tolist()}).setdefault(label, []).append(ca)
                averaged = {k: mean([v[k] for v in values]) for k in METRICS}
                for k, v in averaged.items():
                    per_seed.setdefault(k, []).append(v)
            results.setdefault(label, []).append({k: mean(v) for k, v in per_seed.items()})

    table = {}
    for method, values in per_complex.items():
        table[method] = {k: {"mean": mean(v), "sd": 0.0, "seeds": 1} for k, v in values.items()}
    for label, seeds in results.items():
        table[label] = {k: {"mean": mean([s[k] for s in seeds]),
                            "sd": statistics.stdev([s[k] for s in seeds]) if len(seeds) > 1 else 0.0,
                            "seeds": len(seeds), "per_seed": [s[k] for s in seeds]} for k in METRICS}
    header = f"{'method':<62} " + " ".join(f"{k:>16}" for k in METRICS)
    print(f"held-out CDR-H3 of {len(names)} complexes ({', '.join(names)}), {args.samples} designs each; "
          f"side chains: {'FASPR' if scorer.pack else 'backbone only'}")
    print(header)
    for method, row in table.items():
        cells = " ".join(f"{row[k]['mean']:>9.3f} ± {row[k]['sd']:<5.3f}" if row[k]["seeds"] > 1
                         else f"{row[k]['mean']:>16.3f}" for k in METRICS)
        print(f"{method:<62} {cells}")
    for label, values in speed.items():
        print(f"{label}: {mean(values):.2f} designs/s ({args.threads} thread, {args.samples * len(names)} designs "
              f"per call, {model.diffusion.num_steps} steps)")
    if repacked_rmsd:
        print(f"FASPR on the native CDR-H3 loops: side-chain heavy-atom RMSD to the crystal {mean(repacked_rmsd):.2f} A "
              f"(mean of {len(repacked_rmsd)} complexes; no symmetry correction)")
    report = {"complexes": names, "native_repack_side_chain_rmsd": repacked_rmsd, "samples": args.samples, "side_chains": "FASPR" if scorer.pack else "backbone",
              "table": table, "designs_per_second": {k: mean(v) for k, v in speed.items()},
              "baselines_per_complex": baseline_rows, "machine": platform.machine(), "torch": torch.__version__,
              "threads": args.threads, "checkpoints": {"lm": args.lm, "nolm": args.nolm},
              "first_seed": args.first_seed}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codesign.json").write_text(json.dumps(report, indent=1))
    plot(examples, out / "codesign_loops.png")
    print(json.dumps({"benchmark": "alignab_codesign", **{f"{m}/{k}": round(table[m][k]["mean"], 4)
                                                          for m in table for k in ("aar", "rmsd")}}))


def plot(examples: dict, path: Path) -> None:
    """Designed C-alpha traces over the native loop, projected on the native loop's two principal axes."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(examples), figsize=(4.2 * len(examples), 4.2), squeeze=False)
    colours = {"diffusion + LM guidance": "tab:blue", "diffusion, no LM guidance": "tab:orange"}
    for ax, (name, traces) in zip(axes[0], examples.items()):
        native = torch.tensor(traces["native"])
        centre = native.mean(0)
        _, _, v = torch.linalg.svd(native - centre)
        project = lambda x: ((torch.tensor(x) - centre) @ v[:2].T).numpy()  # noqa: E731
        for label, colour in colours.items():
            for k, trace in enumerate(traces.get(label, [])):
                p = project(trace)
                ax.plot(p[:, 0], p[:, 1], "-o", ms=2, lw=1, alpha=0.6, color=colour, label=label if k == 0 else None)
        p = project(native.tolist())
        ax.plot(p[:, 0], p[:, 1], "-o", ms=3, lw=2.5, color="black", label="native")
        ax.set_title(f"{name} CDR-H3 ({len(native)} residues)")
        ax.set_xlabel("A")
        ax.set_aspect("equal", "datalim")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
