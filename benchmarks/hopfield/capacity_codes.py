"""Hopfield capacity as spherical codes (issue 21, item 2): the separation U-Hop+ Stage I reaches vs
the best any code can reach, retrieval success vs D and vs M, and retrieval time vs M with and
without the learned map. CPU, float32 for Stage I and retrieval, float64 for codes and bounds.

    python benchmarks/hopfield/capacity_codes.py [--seeds 0 1] [--threads 1] [--out docs/hopfield]

1. Separation. Memories: M points uniform on S^{d-1} (d = 64) and M scikit-learn digits (d = 64,
   pixels in [0, 1]). Stage I learns ``Phi: d -> D`` (``LinearFeatureMap``) by U-Hop+'s
   ``separation_loss`` with Adam, exactly the loss and optimizer of ``UHopPlus.training_step``, in a
   plain loop (mini-batches reshuffled every epoch, a lone last memory skipped):
   ``shipped`` = the zoo's defaults (lr 1e-3, tau 0.1, batches of 16, 50 epochs); ``tuned`` =
   full batch, lr 0.01, tau 0.01, 1000 steps (closer to the max-min it relaxes); ``init`` = the
   orthogonally initialized map before any step. The features of a linear map span at most
   r = rank(memories) dimensions, so each cell is compared with the codes of (M, D_eff),
   D_eff = min(D, r): the best lower bound on the max cosine (``best_cosine_bound``, the largest of
   the simplex, Rankin orthoplex, Levenshtein L_2 and cap-packing bounds) and the best known code
   (``best_known_code``: simplex / cross-polytope / polygon where optimal, else the best of 2
   annealed repulsion runs).
2. Retrieval success on digits under the zoo's protocol (``MemoryDataModule``: masked = dropout 0.5
   with survivors x2, noisy = |xi + N(0, 0.5^2)| clamped; success = cosine distance x 100 <= 20; one
   softmax step; beta per cell from ``--betas`` by validation SSE, then scored on test
   corruptions; ``hit``: the memory nearest to the retrieved pattern is the query's own, beta by
   validation hit rate; ``stored``: share of memories that one step from the memory itself returns
   within relative error 0.1, at the best beta of ``--stored-betas``), for plain retrieval (no map)
   and the ``init``, ``shipped`` and ``tuned`` maps:
   vs D at M = ``--fixed-m``, and vs M at D = ``--fixed-d``. Stage I wall time vs M comes from the
   second sweep.
3. Retrieval time vs M (B = 64 queries, d = 784 like MNIST, uniform memories, one softmax step,
   inference): without a map, bare ``softmax(beta x Xi^T) Xi`` and ``retrieve`` (which also checks
   its inputs are finite); ``retrieve`` with ``Phi`` 784 -> 200 (the zoo maps every memory on every
   call); the same map with the memory features computed once and kept ("cached":
   ``softmax(beta Phi(x) F^T) Xi``, F = Phi(Xi)), for D = 200 and 64. Interleaved rounds (every size
   and candidate in each), medians; log-log slopes of time vs M.

Writes ``capacity_codes.json`` and ``capacity_codes_{separation,retrieval,time}.png`` to ``--out``;
prints markdown tables and one JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from data_modules.memories import MemoryDataModule
from zoo.core.plots import save_figure
from zoo.hopfield.capacity import best_cosine_bound, best_known_code, cosine_bounds, max_cosine
from zoo.hopfield.retrieval import LinearFeatureMap, retrieve, separation_loss
from zoo.hopfield.uhop import QUERIES, UHopPlus

STAGE_I = {  # lr, tau, batch size (0 = full batch), epochs
    "shipped": (1e-3, 0.1, 16, 50),
    "tuned": (1e-2, 0.01, 0, 1000),
}
MAPS = ("init", *STAGE_I)
VARIANTS = ("plain", *MAPS)


def stage_one(memories: torch.Tensor, dim: int, config: str | None, seed: int) -> tuple[LinearFeatureMap, float]:
    """Fit ``Phi: d -> dim`` on the memories by U-Hop+'s separation loss (``config`` from ``STAGE_I``;
    None: the initial map). Returns the map and the fit's wall time in seconds."""
    torch.manual_seed(seed)
    feature_map = LinearFeatureMap(memories.shape[1], dim)
    if config is None:
        return feature_map, 0.0
    lr, tau, batch, epochs = STAGE_I[config]
    batch = batch or len(memories)
    optimizer = torch.optim.Adam(feature_map.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(memories), generator=generator)
        for first in range(0, len(memories), batch):
            block = memories[order[first : first + batch]]
            if len(block) < 2:
                continue
            loss = separation_loss(block, feature_map, tau)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return feature_map.requires_grad_(False), time.perf_counter() - start


def sphere_memories(m: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def digit_memories(m: int, seed: int, queries: int = 1) -> MemoryDataModule:
    data = MemoryDataModule(num_memories=m, noise_std=0.5, queries_per_memory=queries, seed=seed)
    data.setup()
    return data


# -- 1. separation vs the bounds --------------------------------------------------------------------
def reference(m: int, dim: int, cache: dict) -> dict:
    """Bounds and the best known code of (M, D), computed once."""
    if (m, dim) not in cache:
        code, name = best_known_code(m, dim, restarts=2, steps=1500, seed=0)
        cache[(m, dim)] = {"bounds": cosine_bounds(m, dim), "bound": best_cosine_bound(m, dim),
                           "known": max_cosine(code).item(), "known_code": name}
    return cache[(m, dim)]


def separation(args, cache: dict) -> list[dict]:
    rows = []
    for source, sizes, dims in (("sphere", args.sphere_sizes, args.sphere_dims),
                                ("digits", args.digit_sizes, args.digit_dims)):
        for m in sizes:
            for dim in dims:
                cell = {"source": source, "M": m, "D": dim, "max_cos": {v: [] for v in MAPS},
                        "seconds": {v: [] for v in STAGE_I}, "rank": []}
                for seed in args.seeds:
                    memories = sphere_memories(m, 64, seed) if source == "sphere" else digit_memories(m, seed).memories
                    cell["rank"].append(int(torch.linalg.matrix_rank(memories.double())))
                    for variant in MAPS:
                        feature_map, seconds = stage_one(memories, dim, None if variant == "init" else variant, seed)
                        cell["max_cos"][variant].append(max_cosine(feature_map(memories).double()).item())
                        if variant in STAGE_I:
                            cell["seconds"][variant].append(seconds)
                cell["D_eff"] = min(dim, min(cell["rank"]))
                cell.update(reference(m, cell["D_eff"], cache))
                rows.append(cell)
                print(f"separation {source} M={m} D={dim}: bound {cell['bound']:.3f}, known {cell['known']:.3f}, "
                      + ", ".join(f"{v} {statistics.mean(cell['max_cos'][v]):.3f}" for v in MAPS), flush=True)
    return rows


# -- 2. retrieval success vs D and vs M -------------------------------------------------------------
@torch.no_grad()
def score(model: UHopPlus, data: MemoryDataModule, query: int, use_map: bool, betas: list[float]) -> dict:
    """Test metrics of one query type: ``success`` (the zoo's, cosine distance x 100 <= 20) and
    ``sse`` at the beta with the lowest validation SSE, and ``hit`` (the memory nearest to the
    retrieved pattern is the query's own) at the beta with the highest validation hit rate."""
    def metrics(split: tuple, beta: float) -> dict:
        values, retrieved = model.retrieval_metrics(split[1 + query], split[0], "softmax", use_map, beta)
        own = torch.arange(len(retrieved)) % len(data.memories)
        hit = (torch.cdist(retrieved, data.memories).argmin(-1) == own).float().mean().item()
        return {"success": values["success"].mean().item(), "sse": values["sse"].mean().item(), "hit": hit}

    val = {beta: metrics(data.val_set.tensors, beta) for beta in betas}
    by_sse = min(betas, key=lambda b: val[b]["sse"])
    by_hit = max(betas, key=lambda b: val[b]["hit"])
    test_sse, test_hit = metrics(data.test_set.tensors, by_sse), metrics(data.test_set.tensors, by_hit)
    return {"beta": by_sse, "beta_hit": by_hit, "success": test_sse["success"], "sse": test_sse["sse"],
            "hit": test_hit["hit"]}


@torch.no_grad()
def stored(model: UHopPlus, use_map: bool, betas: list[float], tolerance: float = 0.1) -> dict:
    """Share of memories that one step from the memory itself returns within relative error
    ``tolerance`` (a stored memory: a near fixed point), at the best beta of the grid."""
    memories = model.memories
    shares = {}
    for beta in betas:
        retrieved, _ = model.retrieve(memories, "softmax", use_map, beta)
        error = (retrieved - memories).norm(dim=-1) / memories.norm(dim=-1)
        shares[beta] = (error <= tolerance).float().mean().item()
    best = max(betas, key=shares.get)
    return {"beta": best, "stored": shares[best]}


def retrieval_cell(m: int, dim: int, seed: int, betas: list[float], stored_betas: list[float]) -> dict:
    data = digit_memories(m, seed, queries=math.ceil(200 / m))
    out = {"success": {}, "hit": {}, "sse": {}, "stored": {}, "beta": {}, "max_cos": {}, "seconds": {}}
    for variant in VARIANTS:
        feature_map, seconds = stage_one(data.memories, dim, None if variant in ("plain", "init") else variant, seed)
        model = UHopPlus(in_dim=64, feature_dim=dim, separations=("softmax",)).eval()
        model.feature_map.load_state_dict(feature_map.state_dict())
        model.set_memories(data.memories)
        use_map = variant != "plain"
        for q, name in enumerate(QUERIES):
            row = score(model, data, q, use_map, betas)
            for key in ("success", "hit", "sse", "beta"):
                out[key][f"{name}/{variant}"] = row[key]
            out["beta"][f"{name}/{variant}/hit"] = row["beta_hit"]
        row = stored(model, use_map, stored_betas)
        out["stored"][variant], out["beta"][f"stored/{variant}"] = row["stored"], row["beta"]
        out["max_cos"][variant] = max_cosine(model.feature_map(data.memories).double() if use_map
                                             else data.memories.double()).item()
        if variant in STAGE_I:
            out["seconds"][variant] = seconds
    return out


def retrieval(args) -> dict:
    sweeps = {"vs_D": [(args.fixed_m, d) for d in args.retrieval_dims],
              "vs_M": [(m, args.fixed_d) for m in args.retrieval_sizes]}
    results = {}
    for sweep, cells in sweeps.items():
        results[sweep] = []
        for m, dim in cells:
            runs = [retrieval_cell(m, dim, seed, args.betas, args.stored_betas) for seed in args.seeds_retrieval]
            row = {"M": m, "D": dim, "runs": runs,
                   "mean": {k: {key: statistics.mean(r[k][key] for r in runs) for key in runs[0][k]}
                            for k in ("success", "hit", "sse", "stored", "max_cos", "seconds")}}
            results[sweep].append(row)
            print(f"retrieval {sweep} M={m} D={dim}: success " + ", ".join(
                f"{k} {v:.3f}" for k, v in row["mean"]["success"].items()) + "; stored " + ", ".join(
                f"{k} {v:.3f}" for k, v in row["mean"]["stored"].items()), flush=True)
    return results


# -- 3. retrieval time vs M -------------------------------------------------------------------------
def timing(args) -> list[dict]:
    b, d = 64, 784
    generator = torch.Generator().manual_seed(0)
    queries = torch.rand(b, d, generator=generator)
    maps = {dim: LinearFeatureMap(d, dim).requires_grad_(False) for dim in (200, 64)}
    beta = 1 / math.sqrt(d)
    cases = []
    for m in args.timing_sizes:
        memories = torch.rand(m, d, generator=generator)
        features = {dim: f(memories) for dim, f in maps.items()}
        calls = {
            "bare": lambda memories=memories: torch.softmax((beta * queries) @ memories.T, -1) @ memories,
            "plain": lambda memories=memories: retrieve(queries, memories, beta, steps=1),
            "map200": lambda memories=memories: retrieve(queries, memories, beta, feature_map=maps[200], steps=1,
                                                         chunk_size=4096),
            "cached200": lambda memories=memories, f=features[200]:
                torch.softmax((beta * maps[200](queries)) @ f.T, -1) @ memories,
            "cached64": lambda memories=memories, f=features[64]:
                torch.softmax((beta * maps[64](queries)) @ f.T, -1) @ memories,
        }
        outputs = {name: call() for name, call in calls.items()}  # warm-up, and the outputs to compare
        diff = (outputs["map200"] - outputs["cached200"]).abs().max().item()
        iters = max(1, int(0.3 / max(1e-4, sum(_once(c) for c in calls.values()))))
        cases.append({"M": m, "calls": calls, "iters": iters, "times": {k: [] for k in calls},
                      "max_abs_diff_map_vs_cached": diff})
    with torch.no_grad():
        for _ in range(args.rounds):  # every size and candidate in each round, so drift hits all alike
            for case in cases:
                for name, call in case["calls"].items():
                    start = time.perf_counter()
                    for _ in range(case["iters"]):
                        call()
                    case["times"][name].append((time.perf_counter() - start) / case["iters"])
    rows = []
    for case in cases:
        ms = {k: statistics.median(t) * 1e3 for k, t in case["times"].items()}
        rows.append({"M": case["M"], "ms": ms, "us_per_memory": {k: 1e3 * v / case["M"] for k, v in ms.items()},
                     "rounds": args.rounds, "iters": case["iters"],
                     "max_abs_diff_map_vs_cached": case["max_abs_diff_map_vs_cached"]})
    return rows


def _once(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x (1 = linear growth)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


# -- plots and tables -------------------------------------------------------------------------------
def degrees(cos: float) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def plot_separation(rows: list[dict], path: Path, dims: tuple[int, ...] = (4, 16, 64)) -> None:
    """Min angle vs M, one panel per memory source and D in ``dims``: the bound, the best known code,
    and the Stage I maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = [s for s in ("sphere", "digits") if any(r["source"] == s for r in rows)]
    fig, axes = plt.subplots(len(sources), len(dims), figsize=(4.2 * len(dims), 3.4 * len(sources)), squeeze=False)
    for i, source in enumerate(sources):
        for j, dim in enumerate(dims):
            ax, cells = axes[i][j], [r for r in rows if r["source"] == source and r["D"] == dim]
            if not cells:
                ax.axis("off")
                continue
            ms = [c["M"] for c in cells]
            ax.plot(ms, [degrees(c["bound"]) for c in cells], "k-", label="upper bound (best of 4)")
            ax.plot(ms, [degrees(c["known"]) for c in cells], "k--", marker=".", label="best known code")
            for variant, style in (("tuned", "C2o-"), ("shipped", "C1s-"), ("init", "C7x:")):
                ax.plot(ms, [degrees(statistics.mean(c["max_cos"][variant])) for c in cells], style,
                        label=f"Stage I {variant}" if variant != "init" else "no Stage I (init map)")
            ax.set_xscale("log")
            ax.set_xticks(ms, [str(m) for m in ms])
            ax.minorticks_off()
            ax.set_title(f"{source} memories (d = 64), D = {dim} (D_eff = {cells[-1]['D_eff']})", fontsize=9)
            ax.set_xlabel("M")
            ax.set_ylabel("min angle between features (deg)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def plot_retrieval(results: dict, path: Path, fixed_m: int, fixed_d: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for row, (sweep, key, label) in enumerate((("vs_D", "D", f"feature dimension D (M = {fixed_m})"),
                                               ("vs_M", "M", f"number of memories M (D = {fixed_d})"))):
        cells = results[sweep]
        xs = [c[key] for c in cells]
        panels = [(f"success/{q}", f"{q} digit queries: success rate") for q in QUERIES]
        panels.append(("stored", "stored memories (one step from the memory)"))
        for col, (metric, title) in enumerate(panels):
            ax = axes[row][col]
            for variant, style in zip(VARIANTS, ("k--", "C7x:", "C1s-", "C2o-")):
                key, sub = (metric, variant) if metric == "stored" else ("success", f"{metric[8:]}/{variant}")
                ys = [[r[key][sub] for r in c["runs"]] for c in cells]
                ax.errorbar(xs, [statistics.mean(y) for y in ys], [statistics.pstdev(y) for y in ys], fmt=style,
                            capsize=2, label=variant if variant in ("plain", "init") else f"Stage I {variant}")
            ax.set_xscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.set_xlabel(label)
            ax.set_ylabel("share")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def plot_time(rows: list[dict], fits: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ms = [r["M"] for r in rows]
    labels = {"bare": "no map, bare softmax(beta x Xi^T) Xi", "plain": "no map, zoo retrieve",
              "map200": "with Phi 784->200 (zoo retrieve)",
              "cached200": "with Phi, features cached (D=200)", "cached64": "with Phi, features cached (D=64)"}
    for name, label in labels.items():
        axes[0].plot(ms, [r["ms"][name] for r in rows], marker="o", label=label)
    axes[0].set_title("one retrieval step, B = 64, d = 784")
    for config, marker in (("shipped", "s"), ("tuned", "o")):
        axes[1].plot([f["M"] for f in fits], [f["seconds"][config] for f in fits], marker=marker, label=f"Stage I {config}")
    axes[1].set_title("Stage I fit time (digits, D = 16)")
    for ax, ylabel in zip(axes, ("ms per call", "seconds")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("M")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="memory sets per separation cell")
    parser.add_argument("--seeds-retrieval", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sphere-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--sphere-dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--digit-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--digit-dims", type=int, nargs="+", default=[4, 16, 64, 200])
    parser.add_argument("--fixed-m", type=int, default=100)
    parser.add_argument("--retrieval-dims", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 200])
    parser.add_argument("--fixed-d", type=int, default=16)
    parser.add_argument("--retrieval-sizes", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--stored-betas", type=float, nargs="+",
                        default=[0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6])
    parser.add_argument("--timing-sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="docs/hopfield")
    parser.add_argument("--replot", action="store_true", help="redraw and reprint from --out's JSON, no runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "capacity_codes.json").read_text())
        vars(args).update(saved["args"])
        seps, ret, times, elapsed, machine = (saved[k] for k in ("separation", "retrieval", "timing", "seconds",
                                                                 "machine"))
    else:
        start = time.perf_counter()
        seps, ret, times = separation(args, {}), retrieval(args), timing(args)
        elapsed = time.perf_counter() - start
        machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                   f"python {platform.python_version()}")
    print(f"\nmachine: {machine}; {elapsed:.0f} s in all\n")

    print("## 1. Max cosine of the normalized features (lower = better separated), mean over seeds\n")
    print("| memories | M | D (D_eff) | best bound (which) | best known code | Stage I tuned | Stage I shipped | init |")
    print("|---|---|---|---|---|---|---|---|")
    for r in seps:
        which = max(r["bounds"], key=r["bounds"].get)
        mean = {v: statistics.mean(r["max_cos"][v]) for v in MAPS}
        print(f"| {r['source']} | {r['M']} | {r['D']} ({r['D_eff']}) | {r['bound']:.3f} ({which}) | "
              f"{r['known']:.3f} ({r['known_code']}) | {mean['tuned']:.3f} | {mean['shipped']:.3f} | {mean['init']:.3f} |")
    for sweep in ("vs_D", "vs_M"):
        print(f"\n## 2. Digits ({sweep}), mean over {len(args.seeds_retrieval)} seeds: test success / hit rate, "
              "masked then noisy; stored share; max cosine of the features\n")
        print("| M | D | " + " | ".join(VARIANTS) + " |")
        print("|---" * (2 + len(VARIANTS)) + "|")
        for c in ret[sweep]:
            s, h, st, mc = (c["mean"][k] for k in ("success", "hit", "stored", "max_cos"))
            print(f"| {c['M']} | {c['D']} | " + " | ".join(
                f"{s['masked/' + v]:.3f}/{h['masked/' + v]:.3f}, {s['noisy/' + v]:.3f}/{h['noisy/' + v]:.3f}; "
                f"{st[v]:.3f}; {mc[v]:.3f}" for v in VARIANTS) + " |")
        chosen = [(k, b) for c in ret[sweep] for r in c["runs"] for k, b in r["beta"].items()]
        grid = lambda k: args.stored_betas if k.startswith("stored") else args.betas  # noqa: E731
        edge = sum(b in (min(grid(k)), max(grid(k))) for k, b in chosen)
        print(f"\nbeta at an end of its grid in {edge} of {len(chosen)} choices")
    fits = [{"M": c["M"], "seconds": c["mean"]["seconds"]} for c in ret["vs_M"]]
    print("\nStage I fit time (s, digits, D = 16): " + ", ".join(
        f"M={f['M']}: shipped {f['seconds']['shipped']:.2f} / tuned {f['seconds']['tuned']:.2f}" for f in fits))
    fit_slopes = {k: round(slope([f["M"] for f in fits], [f["seconds"][k] for f in fits]), 2) for k in STAGE_I}
    print(f"log-log slope of Stage I time vs M: {fit_slopes}")
    print(f"\n## 3. One retrieval step, B = 64, d = 784, median of {args.rounds} interleaved rounds (ms)\n")
    print("| M | bare, no map | zoo retrieve, no map | zoo retrieve with Phi | cached D=200 | cached D=64 "
          "| max abs diff zoo vs cached |")
    print("|---|---|---|---|---|---|---|")
    for r in times:
        ms = r["ms"]
        print(f"| {r['M']} | {ms['bare']:.2f} | {ms['plain']:.2f} | {ms['map200']:.2f} | {ms['cached200']:.2f} | {ms['cached64']:.2f} | "
              f"{r['max_abs_diff_map_vs_cached']:.1e} |")
    time_slopes = {k: round(slope([r["M"] for r in times], [r["ms"][k] for r in times]), 2) for k in times[0]["ms"]}
    print(f"log-log slope of retrieval time vs M: {time_slopes}")

    out.mkdir(parents=True, exist_ok=True)
    plot_separation(seps, out / "capacity_codes_separation.png")
    plot_retrieval(ret, out / "capacity_codes_retrieval.png", args.fixed_m, args.fixed_d)
    plot_time(times, fits, out / "capacity_codes_time.png")
    (out / "capacity_codes.json").write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items() if k != "replot"}, "machine": machine, "seconds": round(elapsed, 1), "stage_i": STAGE_I,
         "separation": seps, "retrieval": ret, "timing": times, "time_slopes": time_slopes,
         "stage_i_time_slopes": fit_slopes}, indent=1))
    print(json.dumps({"benchmark": "hopfield_capacity_codes", "seconds": round(elapsed, 1),
                      "time_slopes": time_slopes, "stage_i_time_slopes": fit_slopes}))


if __name__ == "__main__":
    main()
