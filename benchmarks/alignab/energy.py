"""Validate the AlignAb energy PROXY (``zoo.alignab.energy``; NOT Rosetta) on the 54 real complexes of
``../shared/data/antibody`` (Antibody Docking and Affinity Benchmark, Guest et al. 2021).

    python benchmarks/alignab/energy.py [--data ../shared/data/antibody] [--threads 1] [--repeats 3]
                                        [--permutations 10000] [--out docs/alignab]

1. Correlation with experiment: Spearman rho between experimental ΔG (``affinities.tsv``, 34 complexes)
   and every proxy variant below, each with a two-sided permutation p-value (seeded). All variants
   were fixed before looking at the results and all are reported:
   ``dg`` (interface dG proxy: ref2015-weighted LJ attraction + repulsion + Coulomb between the whole
   antibody and the antigen), ``dg_atr`` (attraction only), ``dg_per_contact`` (``dg`` divided by the
   number of interface residues: antibody or antigen residues with a heavy atom within 4.5 A of the
   partner), ``h3_nonrep`` (CDR-H3-antigen attraction; complexes whose CDRs are numbered),
   and two size baselines that know no physics: ``-contacts`` (minus the interface residue count)
   and ``-dASA`` (minus the buried surface area column of ``cases.tsv``).
2. Time to score one complex: ``score_complex`` (CDR-H3 vs antigen terms, CDR E_total and dG) in
   float32 on CPU with ``--threads`` threads after a warm-up; per complex the median of ``--repeats``
   calls, then the median (and max) over the 54 complexes; also a batch of 8 designs per call.
   Parsing the PDB files (Bio.PDB) is timed separately. The machine may be shared: timings are noisy.
3. Probes: (a) pulled apart -- the antigen moved 500 A away -- every interaction term must be exactly 0;
   (b) pushed in -- CDR-H3 translated toward the antigen C-alpha centroid in 0.5 A steps up to 3 A --
   CDR-H3-antigen repulsion should rise at every step (fraction of complexes where it does).

Writes ``energy.json``, ``energy_vs_dg.png`` and ``energy_push.png`` under ``--out``; prints tables and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from data_modules.complexes import load_complex, read_affinities, read_cases
from zoo.alignab.energy import neighbour_pairs, score_complex, translate
from zoo.core.plots import save_figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from timing import rounds  # noqa: E402

PUSH_STEPS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
CONTACT = 4.5  # A, heavy-atom contact for counting interface residues


def permutation_p(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Spearman rho and its two-sided permutation p-value ``(1 + #|rho_perm| >= |rho|) / (1 + permutations)``."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = (rx - rx.mean()) / rx.std(), (ry - ry.mean()) / ry.std()
    rho = float((rx * ry).mean())
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(ry) for _ in range(permutations)])
    null = (shuffled * rx).mean(1)
    return rho, float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + permutations))


def interface_residues(c) -> int:
    """Antibody and antigen residues with a heavy atom within CONTACT A of the other side."""
    index = torch.arange(len(c))
    first, second = neighbour_pairs(c.coords, c.atom_mask, index[~c.antigen_mask], index[c.antigen_mask], CONTACT)
    d = torch.cdist(c.coords[first], c.coords[second])  # [P, 14, 14]
    ok = c.atom_mask[first][:, :, None] & c.atom_mask[second][:, None, :]
    close = ((d < CONTACT) & ok).flatten(1).any(1)
    return len(set(first[close].tolist()) | set(second[close].tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "antibody"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=10000)
    parser.add_argument("--out", default="docs/alignab")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    cases = read_cases(data / "cases.tsv")
    affinities = read_affinities(data / "affinities.tsv")
    dasa = {}
    with open(data / "cases.tsv") as f:
        header = f.readline().rstrip("\n").split("\t")
        column = next(i for i, h in enumerate(header) if h.startswith("ΔASA"))
        for line in f:
            row = line.rstrip("\n").split("\t")
            if row and row[0].strip():
                dasa[row[0].strip().split("_")[0]] = float(row[column])

    rows, parse_s = [], []
    for case in cases:
        start = time.perf_counter()
        c = load_complex(data / "complexes", case, require_cdrs=False)
        parse_s.append(time.perf_counter() - start)
        h3 = c.cdr_h3_mask
        call = lambda coords: score_complex(coords, c.aa, c.atom_mask, c.chain, h3, c.antigen_mask)  # noqa: E731
        energy = call(c.coords)
        batch = c.coords[None].expand(8, -1, -1, -1).contiguous()
        row = {"name": case.name, "residues": len(c), "numbered": bool(h3.any()),
               "dg": float(energy.dg[0]), "cdr_total": float(energy.cdr_total[0]),
               "h3_nonrep": float(energy.cdr_ag_nonrep[0]), "h3_rep": float(energy.cdr_ag_rep[0]),
               "h3_elec": float(energy.cdr_ag_elec[0]),
               "contacts": interface_residues(c), "dasa": dasa.get(case.name),
               "score_s": statistics.median(rounds(lambda: call(c.coords), args.repeats, 0.0)),
               "score8_s": statistics.median(rounds(lambda: call(batch), args.repeats, 0.0))}
        row["dg_atr"] = float(energy.dg_atr[0])  # the attraction part of dg, same interface pairs
        apart = call(translate(c.coords, c.antigen_mask, torch.tensor([500.0, 0.0, 0.0])))
        row["apart_max_abs"] = max(abs(float(getattr(apart, k)[0])) for k in ("dg", "cdr_ag_nonrep", "cdr_ag_rep", "cdr_ag_elec"))
        if h3.any():
            ca = c.coords[:, 1]
            direction = ca[c.antigen_mask].mean(0) - ca[h3].mean(0)
            direction = direction / direction.norm()
            pushed = torch.stack([translate(c.coords, h3, direction * s) for s in PUSH_STEPS])
            row["push_rep"] = call(pushed).cdr_ag_rep.tolist()
        rows.append(row)
        print(f"{case.name}: {len(c)} residues, dG proxy {row['dg']:.2f}, H3 nonrep {row['h3_nonrep']:.2f}, "
              f"H3 rep {row['h3_rep']:.2f}, score {row['score_s'] * 1e3:.1f} ms", flush=True)

    # 1. correlation with experiment
    with_dg = [r for r in rows if r["name"] in affinities]
    experimental = np.array([affinities[r["name"]] for r in with_dg])
    variants = {
        "dg": [r["dg"] for r in with_dg],
        "dg_atr": [r["dg_atr"] for r in with_dg],
        "dg_per_contact": [r["dg"] / max(r["contacts"], 1) for r in with_dg],
        "h3_nonrep": [r["h3_nonrep"] if r["numbered"] else None for r in with_dg],
        "-contacts": [-r["contacts"] for r in with_dg],
        "-dASA": [-r["dasa"] if r["dasa"] is not None else None for r in with_dg],
    }
    correlations = {}
    print("\n## Spearman rho with experimental ΔG (proxy, NOT Rosetta)\n")
    print("| variant | n | rho | permutation p | scipy p |")
    print("|:--|--:|--:|--:|--:|")
    for k, (name, values) in enumerate(variants.items()):
        keep = [i for i, v in enumerate(values) if v is not None]
        x, y = np.array([values[i] for i in keep]), experimental[keep]
        rho, p = permutation_p(x, y, args.permutations, seed=k)
        scipy_rho, scipy_p = spearmanr(x, y)
        assert abs(rho - scipy_rho) < 1e-9
        correlations[name] = {"n": len(keep), "rho": round(rho, 4), "p_perm": round(p, 4), "p_scipy": round(float(scipy_p), 4)}
        print(f"| {name} | {len(keep)} | {rho:+.3f} | {p:.4f} | {scipy_p:.4f} |")

    # 2. timing
    score_ms = [r["score_s"] * 1e3 for r in rows]
    score8_ms = [r["score8_s"] * 1e3 for r in rows]
    timing = {"complexes": len(rows), "threads": args.threads, "score_ms_median": round(statistics.median(score_ms), 1),
              "score_ms_max": round(max(score_ms), 1), "score8_ms_median": round(statistics.median(score8_ms), 1),
              "parse_s_median": round(statistics.median(parse_s), 2),
              "residues_median": statistics.median(r["residues"] for r in rows), "residues_max": max(r["residues"] for r in rows)}
    print("\n## Time to score one complex (float32, CPU)\n")
    print(f"score_complex, 1 design: median {timing['score_ms_median']} ms, max {timing['score_ms_max']} ms over "
          f"{len(rows)} complexes ({timing['residues_median']} residues median, {timing['residues_max']} max); "
          f"8 designs per call: median {timing['score8_ms_median']} ms; Bio.PDB parsing: median {timing['parse_s_median']} s")

    # 3. probes
    pushed = [r for r in rows if "push_rep" in r]
    rising = [all(b > a for a, b in zip(r["push_rep"], r["push_rep"][1:])) for r in pushed]
    probes = {"apart_max_abs": max(r["apart_max_abs"] for r in rows), "push_steps_A": list(PUSH_STEPS),
              "push_rising_fraction": round(sum(rising) / len(rising), 4), "push_complexes": len(rising),
              "push_rep_median": [round(statistics.median(r["push_rep"][k] for r in pushed), 2) for k in range(len(PUSH_STEPS))]}
    print("\n## Probes\n")
    print(f"pulled apart by 500 A: max |interaction term| over {len(rows)} complexes = {probes['apart_max_abs']}")
    print(f"CDR-H3 pushed toward the antigen: repulsion rises at every step in {sum(rising)}/{len(rising)} complexes; "
          f"median repulsion per step {probes['push_rep_median']}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads"
    result = {"benchmark": "alignab_energy", "proxy": "LJ split + Coulomb, NOT Rosetta", "machine": machine,
              "correlations": correlations, "timing": timing, "probes": probes, "complexes": rows}
    (out / "energy.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(with_dg, experimental, pushed, out)
    print(json.dumps({k: v for k, v in result.items() if k != "complexes"}))


def plot(with_dg: list[dict], experimental: np.ndarray, pushed: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, label in ((axes[0], "dg", "interface dG proxy (kcal/mol)"), (axes[1], "h3_nonrep", "CDR-H3 E_nonRep proxy")):
        pts = [(r[key], e) for r, e in zip(with_dg, experimental) if key != "h3_nonrep" or r["numbered"]]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14)
        ax.set_xlabel(label + " [PROXY, not Rosetta]", fontsize=8)
        ax.set_ylabel("experimental ΔG (kcal/mol)")
    save_figure(fig, out / "energy_vs_dg.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in pushed:
        ax.plot(PUSH_STEPS, np.maximum(r["push_rep"], 1e-3), color="tab:red", alpha=0.3, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("CDR-H3 shift toward the antigen (A)")
    ax.set_ylabel("CDR-H3-antigen E_Rep proxy (kcal/mol)")
    save_figure(fig, out / "energy_push.png")


if __name__ == "__main__":
    main()
