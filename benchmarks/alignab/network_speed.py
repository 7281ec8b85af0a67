"""Speed of the AlignAb co-design network (``zoo.alignab.codesign_network``) on the CPU: the old formulas
(the network before the fast paths, kept as the reference of ``tests/alignab/test_codesign_network_speed.py``)
against the current code, in the same process with the
same weights (the shipped checkpoint ``alignab-codesign-h3``, size small) and the same threads.

    python benchmarks/alignab/network_speed.py [--threads 1] [--repeats 3] [--design-repeats 1]
        [--data ../shared/data/antibody] [--json PATH]

Inputs: real 64-residue design-mode patches (``ComplexDataModule``, patch_size 64, as in
``benchmarks/alignab/codesign.py``); their loops noised at random timesteps (seeded). Rows:

* ``fwd B=64``: one network forward of 64 patches under ``torch.no_grad``.
* ``fwd+bwd B=8``: forward plus backward to every weight (the training path), 8 patches.
* ``design 8x8, 25 steps``: ``CoDesignDiffusion.design`` of 8 held-out CDR-H3 patches x 8 designs at 25
  respaced steps (seeded). Candidates: the old network (old formulas, no cache), the new network without the
  pair-feature cache (``network_fn(cond, cache=False)``) and with it (the default: ``PairCache``, only the rows
  and columns of the loop residues recomputed per step).

Each candidate of a forward row runs once cold (the outputs compared), then ``--repeats`` (``--design-repeats`` for design) interleaved
rounds (the design row: one warm-up design of one patch, then ``--design-repeats`` rounds, the first one's
outputs compared); the table shows the median seconds per call and the speed-up (old / new, median of per-round
ratios), with the largest difference of the outputs (forward: relative to the old output's largest
magnitude; fwd+bwd: of the weight gradients, relative per tensor; design: types equal, positions in A).
The machine may be shared: the load average is printed at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from data_modules.complexes import CDR_NAMES, ComplexDataModule
from zoo.core.registry import load_pretrained

# the old formulas (the network before the fast paths), on the current network's weights: the reference of the
# exactness tests, imported so that the benchmark times exactly what the tests compare against
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.alignab.test_codesign_network_speed import reference_forward as old_forward  # noqa: E402


# -- timing --------------------------------------------------------------------------------------------------
def interleaved(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every candidate in each of ``repeats`` rounds (the caller has made one cold call of
    each: the one whose outputs are compared)."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(label: str, times: dict[str, list[float]], extra: dict) -> dict:
    old = times["old"]
    return {"row": label, "s": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "speedup": {k: round(statistics.median(a / b for a, b in zip(old, v)), 2) for k, v in times.items()
                        if k != "old"}, **extra}


def noisy_inputs(model, batch, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state0, design, cond = model.inputs(batch)
        t = torch.randint(1, model.diffusion.num_steps + 1, (len(design),), generator=generator)
        noisy, _ = model.diffusion.add_noise(state0, design, t, generator)
    return noisy, t, cond


def forward_row(model, batch, repeats: int) -> dict:
    net = model.network
    noisy, t, cond = noisy_inputs(model, batch, 0)
    args = (noisy.aa, noisy.rot, noisy.pos, t)
    calls = {"old": lambda: old_forward(net, *args, **cond), "new": lambda: net(*args, **cond)}
    with torch.no_grad():
        out = {k: call() for k, call in calls.items()}
        times = interleaved(calls, repeats)
    diff = {name: float((a - b).abs().max() / b.abs().max()) for name, a, b in
            zip(("eps", "R0", "logits"), out["new"], out["old"])}
    return summarize(f"fwd B={len(noisy.aa)}", times, {"max_rel_diff": diff})


def backward_row(model, batch, repeats: int) -> dict:
    net = model.network
    noisy, t, cond = noisy_inputs(model, batch, 1)
    args = (noisy.aa, noisy.rot, noisy.pos, t)
    generator = torch.Generator().manual_seed(2)
    weights = None
    params = [p for p in net.parameters() if p.requires_grad]

    def step(fn):
        nonlocal weights
        out = fn()
        if weights is None:
            weights = [torch.randn(o.shape, generator=generator) for o in out]
        loss = sum((o * w).sum() for o, w in zip(out, weights))
        return torch.autograd.grad(loss, params)

    calls = {"old": lambda: step(lambda: old_forward(net, *args, **cond)), "new": lambda: step(lambda: net(*args, **cond))}
    grads = {k: call() for k, call in calls.items()}
    times = interleaved(calls, repeats)
    diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(grads["new"], grads["old"]))
    return summarize(f"fwd+bwd B={len(noisy.aa)}", times, {"max_rel_grad_diff": diff})


def design_row(model, batch, num: int, steps: int, repeats: int) -> dict:
    net = model.network

    def old_design():
        rows = {k: v.repeat_interleave(num, 0) for k, v in batch.items()}
        state0, design, cond = model.inputs(rows)
        fn = lambda state, t: old_forward(net, state.aa, state.rot, state.pos, t, **cond)  # noqa: E731
        return state0, model.diffusion.sample(fn, state0, design, torch.Generator().manual_seed(0), steps=steps), design

    def new_design(cache: bool):
        original = model.network_fn
        if not cache:
            model.network_fn = lambda cond: type(model).network_fn(model, cond, cache=False)
        try:
            return model.design(batch, num, torch.Generator().manual_seed(0), steps=steps)
        finally:
            model.network_fn = original

    calls = {"old": old_design, "new, no cache": lambda: new_design(False), "new": lambda: new_design(True)}
    out = {}
    with torch.no_grad():
        # warm-up on one patch: the sampler's per-jump IGSO3 tables are built once, on the first call
        model.design({k: v[:1] for k, v in batch.items()}, 1, torch.Generator().manual_seed(0), steps=steps)
        times = {name: [] for name in calls}
        for _ in range(repeats):  # no cold call: the first timed round's outputs are compared
            for name, call in calls.items():
                start = time.perf_counter()
                out.setdefault(name, call())
                times[name].append(time.perf_counter() - start)
    _, ref, design = out["old"]
    same = {k: {"types_equal": bool(torch.equal(o[1].aa, ref.aa)),
                "max_pos_diff_A": float((o[1].pos - ref.pos).abs().max() * 10)} for k, o in out.items() if k != "old"}
    loop = design.sum(-1)
    return summarize(f"design {len(batch['aa'])}x{num}, {steps} steps", times,
                     {"vs_old": same, "loop_lengths": [int(loop.min()), int(loop.max())]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the forward rows")
    parser.add_argument("--design-repeats", type=int, default=1, help="timed rounds of the design row")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--data", default="../shared/data/antibody")
    parser.add_argument("--json", default=None, help="also write the JSON line here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    load_start = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {machine}, {torch.get_num_threads()} threads; load average at start "
          f"{load_start:.2f}\n")
    start = time.perf_counter()
    dm = ComplexDataModule(data_dir=args.data, cache_dir="runs/alignab/complex_cache", patch_size=64,
                           design_cdrs=list(CDR_NAMES), eval_cdr="H3", val_fraction=0.1, test_fraction=0.2, seed=0)
    dm.setup()
    model = load_pretrained("alignab-codesign-h3")
    size = model.hparams.size
    train = dm.train_set[list(range(64))]
    rows = [forward_row(model, train, args.repeats),
            backward_row(model, {k: v[:8] for k, v in train.items()}, args.repeats),
            design_row(model, dm.test_set[list(range(8))], 8, args.steps, args.design_repeats)]
    names = ["new, no cache", "new"]
    print(f"alignab-codesign-h3 (size {size}), patches of 64 residues\n")
    print("| row | old s | " + " | ".join(f"{n} s (speed-up)" for n in names) + " | agreement with old |")
    print("|---|---:|" + "---:|" * len(names) + "---|")
    for r in rows:
        cells = [f"{r['s'][n]:.3f} ({r['speedup'][n]:.2f}x)" if n in r["s"] else "" for n in names]
        agree = {k: v for k, v in r.items() if k.startswith(("max_rel", "vs_old"))}
        print(f"| {r['row']} | {r['s']['old']:.3f} | " + " | ".join(cells) + f" | {json.dumps(agree)} |")
    load_end = os.getloadavg()[0]
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average at end {load_end:.2f}")
    line = json.dumps({"benchmark": "alignab_network_speed", "threads": args.threads, "size": size,
                       "repeats": args.repeats, "design_repeats": args.design_repeats, "steps": args.steps,
                       "rows": rows, "torch": torch.__version__, "machine": machine,
                       "load_average": [round(load_start, 2), round(load_end, 2)]})
    print(line)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
