"""One-process GPU suite: every speed check of the zoo that needs an accelerator, in one run of
about five minutes on one GPU (``--budget``), printing a table per part and one JSON line at the end.

    python benchmarks/gpu_suite.py                          # CUDA, full sizes
    python benchmarks/gpu_suite.py --device cpu --quick     # CPU, tiny shapes (~1 min): checks the suite itself
    python benchmarks/gpu_suite.py --stage-site .whl/site   # copy the CLI's pure-Python dependencies
    python benchmarks/gpu_suite.py --site .whl/site         # ... and use them where they are not installed

Parts, in order (``--parts`` picks some); each is guarded: a failure is reported and the next part
runs, and a part that would start after the budget is spent is skipped, with the reason printed:

- ``peak``: the measured bfloat16 matmul throughput (the denominator of the MFU estimate).
- ``ndlinear``: ``zoo.ndlinear.NdLinear`` vs the reference ``ndlinear`` package vs a dense Linear,
  forward+backward on the shapes of ``benchmarks/ndlinear/layer.py`` (its ``SHAPES`` and modules).
- ``hopfield``: sparsemax / 1.5-entmax vs softmax (``benchmarks/hopfield/sparse_maps.py``'s ``measure``,
  with its CUDA-event timing) on its GPU shapes.
- ``dit``: zoo's DiT vs diffusers' ``DiTTransformer2DModel`` (built by ``benchmarks/dit/vs_diffusers.py``)
  at S/2, B/2 and XL/2 on 256px latents (32x32x4, 1000 classes), bf16 autocast: a training step
  (forward, MSE, backward, AdamW step; fused AdamW on CUDA for both) and a sampling forward (no grad,
  batch doubled as under CFG), interleaved rounds.
- ``sampling``: ``ConditionalDiT.sample`` (DDIM, guided) per step against one guided forward, and on
  CUDA the number of synchronizing calls (``torch.cuda.set_sync_debug_mode``) of 2 and of 10 steps:
  equal counts mean no per-step host sync.
- ``zoo_fit``: the step time of ``python -m zoo fit`` (``ZooCLI``, in this process) against a plain
  PyTorch loop on the same ConditionalDiT-B/2, data loader, fused AdamW, EMA and bf16 autocast
  (goal: <= 1.05x); also the zoo without its ``FiniteLoss`` callback (a host sync per step). Without
  jsonargparse (and no ``--site``) the zoo side is a ``Trainer`` with the zoo's callbacks, and says so.
- ``cli``: ``python -m zoo fit --config <--cli-config> --config configs/trainer/<fragment>.yaml
  --trainer.fast_dev_run true`` for the ``gpu``, ``bf16``, ``ddp_gpu`` and ``fsdp_gpu`` fragments, in
  fresh processes (without CUDA only ``bf16`` runs; without jsonargparse none, unless ``--site``).
- ``dit_compiled``: the ``dit`` timings with zoo's DiT under ``torch.compile`` (the modules' ``compile: true``),
  compile time reported apart, against the diffusers times of ``dit``.
- ``mfu``: model FLOPs of a DiT-XL/2 training step (``FlopCounterMode``: matmuls, convolutions,
  attention) over its measured time (eager, and compiled when ``dit_compiled`` ran), as a fraction
  of the ``peak`` (goal: >= 40%).

Timing: CUDA events around each round of calls (one synchronization per round), ``perf_counter`` on
the CPU; medians over rounds. Numbers are this machine's only; compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
for _path in (str(ROOT), str(BENCH)):  # zoo / data_modules; this file as `gpu_suite` (the zoo_fit data class)
    if _path not in sys.path:
        sys.path.insert(0, _path)

from data_modules.synthetic import SyntheticDataModule  # noqa: E402

# the compiled DiT (minutes of compilation) after the parts that must report; the MFU wants its times
PARTS = ("peak", "ndlinear", "hopfield", "dit", "sampling", "zoo_fit", "cli", "dit_compiled", "mfu")
CLI_FRAGMENTS = ("gpu", "bf16", "ddp_gpu", "fsdp_gpu")
CLI_PACKAGES = ("jsonargparse", "docstring_parser", "typeshed_client")  # pure Python: a folder on sys.path does
# (size, patch, latent side, latent channels, batch) at 256px (32x32x4 latents); quick: one tiny case
DIT_CASES = [("DiT-S", 2, 32, 4, 128), ("DiT-B", 2, 32, 4, 64), ("DiT-XL", 2, 32, 4, 32)]
DIT_QUICK = [("DiT-tiny", 2, 8, 4, 4)]


# -- timing ----------------------------------------------------------------------------------------
class Timer:
    """Seconds per call of a round of ``iters`` calls: CUDA events on a GPU (synchronized once, at
    the end of the round), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, call: Callable[[], object], iters: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        start_s = time.perf_counter()
        for _ in range(iters):
            call()
        return (time.perf_counter() - start_s) / iters

    def calibrate(self, call: Callable[[], object], round_s: float, max_iters: int = 200) -> int:
        """Calls per round for rounds of about ``round_s`` (after two warm-up calls)."""
        self(call, 1)
        one = self(call, 1)
        return max(1, min(max_iters, int(round_s / max(one, 1e-6))))

    def interleaved(self, calls: dict[str, Callable[[], object]], repeats: int, round_s: float) -> dict[str, float]:
        """Median seconds per call of each candidate, the candidates alternating round by round."""
        iters = {name: self.calibrate(call, round_s) for name, call in calls.items()}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                times[name].append(self(call, iters[name]))
        return {name: statistics.median(t) for name, t in times.items()}


class Skip(Exception):
    """A part (or case) that cannot run here: its reason is printed and recorded."""


def available(name: str) -> bool:
    """Whether ``import name`` would find a module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load(path: Path, name: str):
    """A benchmark script as a module (they are scripts, not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(header: list[str], rows: list[list[object]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def autocast(device: torch.device, enabled: bool = True):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def quiet():
    """Lightning's banners, tips and progress bar out of the suite's tables (they still run)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- the suite -------------------------------------------------------------------------------------
class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.quick = args.quick
        self.timer = Timer(self.device)
        self.repeats = 1 if self.quick else args.repeats
        self.round_s = 0.02 if self.quick else args.round_s
        self.results: dict[str, dict] = {}
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, parts: list[str]) -> None:
        for name in parts:
            print(f"\n## {name}")
            start = time.perf_counter()
            need = {"dit_compiled": 60.0, "cli": 20.0}.get(name, 5.0) * (0.1 if self.quick else 1.0)
            try:
                if self.left() < need:
                    raise Skip(f"budget: {self.left():.0f} s left of {self.args.budget:.0f} s, this part needs "
                               f"about {need:.0f} s")
                result = getattr(self, f"part_{name}")()
                result = {"status": "ok", **(result or {})}
            except Skip as reason:
                result = {"status": "skipped", "reason": str(reason)}
                print(f"skipped: {reason}")
            except Exception as err:  # noqa: BLE001 (one part's failure must not stop the others)
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:800]}
                print(f"FAILED: {type(err).__name__}: {err}")
                traceback.print_exc(limit=4, file=sys.stdout)
            result["seconds"] = round(time.perf_counter() - start, 1)
            self.results[name] = result
            free(self.device)

    # -- peak ----------------------------------------------------------------------------------
    def part_peak(self) -> dict:
        sizes = [256] if self.quick else ([4096, 8192] if self.cuda else [1024])
        rows, best = [], 0.0
        for n in sizes:
            a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
            b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
            seconds = self.timer.interleaved({"mm": lambda a=a, b=b: a @ b}, max(self.repeats, 3), self.round_s)["mm"]
            tflops = 2 * n**3 / seconds / 1e12
            best = max(best, tflops)
            rows.append([f"{n}x{n}x{n}", f"{seconds * 1e3:.3f}", f"{tflops:.1f}"])
        table(["bf16 matmul", "ms", "TFLOP/s"], rows)
        self.peak = best
        return {"bf16_matmul_tflops": round(best, 2), "rows": rows}

    # -- ndlinear ------------------------------------------------------------------------------
    def part_ndlinear(self) -> dict:
        try:
            bench = load(BENCH / "ndlinear" / "layer.py", "ndlinear_layer_bench")
        except ImportError as err:
            raise Skip(f"benchmarks/ndlinear/layer.py does not import here ({err}); the reference is "
                       "`pip install ndlinear==1.0.0`") from err
        shapes = list(bench.SHAPES)
        rows, out = [], []
        for shape, hidden in shapes:
            shape = (min(shape[0], 4), *shape[1:]) if self.quick else tuple(shape)
            dims = shape[1:]
            torch.manual_seed(0)
            reference = bench.ReferenceNdLinear(dims, hidden)
            modules = {"reference": reference, "zoo": bench.NdLinear.from_reference(reference),
                       "linear": bench.Dense(dims, hidden)}
            modules = {k: m.to(self.device) for k, m in modules.items()}
            x = torch.randn(*shape, device=self.device, requires_grad=True)
            calls = {k: (lambda m=m: m(x).sum().backward()) for k, m in modules.items()}
            ms = {k: v * 1e3 for k, v in self.timer.interleaved(calls, self.repeats, self.round_s).items()}
            speedup = ms["reference"] / ms["zoo"]
            rows.append([f"{shape}->{hidden}", f"{ms['reference']:.3f}", f"{ms['zoo']:.3f}", f"{ms['linear']:.3f}",
                         f"{speedup:.2f}x", f"{ms['zoo'] / ms['linear']:.2f}"])
            out.append({"shape": f"{shape}->{hidden}", "ms": {k: round(v, 4) for k, v in ms.items()},
                        "speedup_vs_reference": round(speedup, 3)})
        table(["shape (fwd+bwd, fp32)", "reference ms", "zoo ms", "Linear ms", "zoo speed-up", "zoo/Linear"], rows)
        print(f"{len(shapes)} shapes from benchmarks/ndlinear/layer.py SHAPES" + (" (batch cut to 4: --quick)" if self.quick else ""))
        return {"shapes": len(shapes), "rows": out,
                "min_speedup": round(min(r["speedup_vs_reference"] for r in out), 3)}

    # -- hopfield ------------------------------------------------------------------------------
    def part_hopfield(self) -> dict:
        bench = load(BENCH / "hopfield" / "sparse_maps.py", "hopfield_sparse_maps_bench")
        if self.quick:
            plan = [((64, 1000), ["fwd", "fwd+bwd"])]
        elif self.cuda:  # the largest shape forward only: seven [1024, 1e6] outputs and their graphs are big
            plan = [(bench.GPU_SHAPES[0], ["fwd", "fwd+bwd"]), *[(s, ["fwd"]) for s in bench.GPU_SHAPES[1:]]]
        else:
            plan = [(s, ["fwd", "fwd+bwd"]) for s in bench.CPU_SHAPES]
        rows, out = [], []
        for shape, passes in plan:
            for r in bench.measure(shape, self.repeats, self.device, passes):
                out.append(r)
                ratio = r["ratio_vs_softmax"]
                rows.append([f"[{r['B']}, {r['M']}]", r["pass"], f"{r['ms']['softmax']:.3f}",
                             *(f"{ratio[f'{m} {k}']:.1f}x" for m in bench.MAPS for k in bench.METHODS),
                             f"{max(r['max_abs_diff_vs_sort'].values()):.1e}"])
            free(self.device)
        table(["[B, M]", "pass", "softmax ms", *(f"{m} {k} (x softmax)" for m in bench.MAPS for k in bench.METHODS),
               "max diff vs sort"], rows)
        return {"rows": out}

    # -- DiT vs diffusers ----------------------------------------------------------------------
    def dit_cases(self):
        if self.quick:
            return DIT_QUICK
        return DIT_CASES if self.cuda else [(*DIT_CASES[0][:4], 4)]  # a CPU: DiT-S/2 at batch 4

    def dit_inputs(self, side: int, channels: int, batch: int):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, side, side, generator=g).to(self.device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(self.device)
        y = torch.randint(0, 1000, (batch,), generator=g).to(self.device)
        return x, t, y, torch.randn(x.shape, generator=g).to(self.device)

    def dit_calls(self, forward, model, inputs):
        """(train step, sampling forward) closures for ``forward(x, t, y)`` of ``model``."""
        from zoo.dit.optim import adamw

        x, t, y, target = inputs
        optimizer = adamw(model.parameters(), lr=1e-4)
        x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 1000)])

        def train():
            model.train()
            with autocast(self.device):
                loss = F.mse_loss(forward(x, t, y).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def sample():
            model.eval()
            with autocast(self.device):
                forward(x2, t2, y2)

        return train, sample

    def part_dit(self) -> dict:
        from zoo.dit.model import dit

        try:
            vs = load(BENCH / "dit" / "vs_diffusers.py", "dit_vs_diffusers_bench")
            reference, why = vs.reference, None
        except ImportError as err:
            reference, why = None, f"diffusers is not importable ({err}): zoo only; `pip install diffusers`"
            print(f"note: {why}")
        rows, out = [], []
        self.dit_times: dict[str, dict] = {}
        for size, patch, side, channels, batch in self.dit_cases():
            torch.manual_seed(0)
            ours = dit(size, patch_size=patch, input_size=side, in_channels=channels, num_classes=1000).to(self.device)
            inputs = self.dit_inputs(side, channels, batch)
            train, sample = self.dit_calls(ours, ours, inputs)
            calls = {("zoo", "train"): train, ("zoo", "sample"): sample}
            theirs = None
            if reference is not None:
                theirs = reference(size, patch, side, channels).to(self.device)
                their_train, their_sample = self.dit_calls(
                    lambda x, t, y, m=theirs: m(x, timestep=t, class_labels=y).sample, theirs, inputs)
                calls.update({("diffusers", "train"): their_train, ("diffusers", "sample"): their_sample})
            times = {}
            for kind in ("train", "sample"):
                pair = {name: call for (name, k), call in calls.items() if k == kind}
                times.update({(name, kind): s for name, s in self.timer.interleaved(pair, self.repeats, self.round_s).items()})
            name = f"{size}/{patch}"
            row = {"model": name, "input": f"{side}x{side}x{channels}", "batch": batch,
                   "params_zoo": sum(p.numel() for p in ours.parameters())}
            for kind in ("train", "sample"):
                row[f"{kind}_ms_zoo"] = round(times[("zoo", kind)] * 1e3, 3)
                if theirs is not None:
                    row[f"{kind}_ms_diffusers"] = round(times[("diffusers", kind)] * 1e3, 3)
                    row[f"{kind}_speedup"] = round(times[("diffusers", kind)] / times[("zoo", kind)], 3)
            self.dit_times[name] = row
            out.append(row)
            rows.append([name, f"{side}x{side}x{channels}", batch, f"{row['train_ms_zoo']:.2f}",
                         f"{row.get('train_ms_diffusers', '-')}", f"{row.get('train_speedup', '-')}",
                         f"{row['sample_ms_zoo']:.2f}", f"{row.get('sample_ms_diffusers', '-')}",
                         f"{row.get('sample_speedup', '-')}"])
            del ours, theirs, calls, train, sample
            free(self.device)
        table(["model", "latents", "batch", "train ms zoo", "diffusers", "speed-up (goal >= 1.2)",
               "sample fwd (2B) ms zoo", "diffusers", "speed-up"], rows)
        if self.quick:
            print("--quick: DiT-tiny/2 on 8x8x4 only")
        elif not self.cuda:
            print("CPU: DiT-S/2 only (B/2 and XL/2 on a GPU)")
        return {"rows": out, **({"note": why} if why else {})}

    def part_dit_compiled(self) -> dict:
        if not (self.cuda or self.args.compile_on_cpu):
            raise Skip("torch.compile on the CPU takes minutes per model (--compile-on-cpu to force)")
        from zoo.dit.model import dit

        eager = getattr(self, "dit_times", {})
        rows, out = [], []
        cases = sorted(self.dit_cases(), key=lambda c: c[0] != "DiT-XL")  # XL first: the MFU part wants it
        for size, patch, side, channels, batch in cases:
            name = f"{size}/{patch}"
            if self.left() < (10 if self.quick else 45):
                out.append({"model": name, "status": "skipped", "reason": f"budget: {self.left():.0f} s left"})
                print(f"{name}: skipped (budget: {self.left():.0f} s left)")
                continue
            torch._dynamo.reset()
            torch.manual_seed(0)
            ours = dit(size, patch_size=patch, input_size=side, in_channels=channels, num_classes=1000).to(self.device)
            ours.compile()  # what `compile: true` does to the modules' denoiser
            train, sample = self.dit_calls(ours, ours, self.dit_inputs(side, channels, batch))
            start = time.perf_counter()
            train(), sample()
            self.timer.sync()
            compile_s = time.perf_counter() - start
            times = {kind: self.timer.interleaved({kind: fn}, self.repeats, self.round_s)[kind]
                     for kind, fn in (("train", train), ("sample", sample))}
            row = {"model": name, "batch": batch, "compile_s": round(compile_s, 1)}
            cells = [name, batch, f"{compile_s:.0f}"]
            for kind in ("train", "sample"):
                row[f"{kind}_ms_compiled"] = round(times[kind] * 1e3, 3)
                ref = eager.get(name, {})
                row[f"{kind}_ms_eager"] = ref.get(f"{kind}_ms_zoo")
                row[f"{kind}_ms_diffusers"] = ref.get(f"{kind}_ms_diffusers")
                if row[f"{kind}_ms_diffusers"]:
                    row[f"{kind}_speedup_vs_diffusers"] = round(row[f"{kind}_ms_diffusers"] / row[f"{kind}_ms_compiled"], 3)
                cells += [f"{row[f'{kind}_ms_compiled']:.2f}", f"{row[f'{kind}_ms_eager'] or '-'}",
                          f"{row[f'{kind}_ms_diffusers'] or '-'}", f"{row.get(f'{kind}_speedup_vs_diffusers', '-')}"]
            out.append(row)
            rows.append(cells)
            del ours, train, sample
            free(self.device)
        torch._dynamo.reset()
        table(["model", "batch", "compile s", "train ms compiled", "eager", "diffusers", "speed-up vs diffusers",
               "sample ms compiled", "eager", "diffusers", "speed-up vs diffusers"], rows)
        print("(diffusers and eager times from the `dit` part of this run, other rounds)")
        self.dit_compiled = {r["model"]: r for r in out if "train_ms_compiled" in r}
        return {"rows": out}

    # -- sampling loop -------------------------------------------------------------------------
    def part_sampling(self) -> dict:
        from zoo.dit.conditional import ConditionalDiT
        from zoo.dit.diffusion import guided

        size, side, channels, n, steps = ("DiT-tiny", 8, 4, 4, 4) if self.quick else ("DiT-B", 32, 4, 16, 10)
        model = ConditionalDiT(size=size, patch_size=2, input_size=side, in_channels=channels, num_classes=1000,
                               sample_steps=steps).to(self.device).eval()
        labels = torch.arange(n, device=self.device) % 1000
        generator = torch.Generator(self.device).manual_seed(0)

        def sample(k: int = steps):
            with autocast(self.device):
                return model.sample(labels, steps=k, generator=generator)

        forward = guided(model.ema, model.hparams.cfg_scale, model.ema.null_class)
        x = torch.randn(n, channels, side, side, device=self.device)
        t = torch.full((n,), 500, device=self.device)

        @torch.no_grad()
        def one_forward():
            with autocast(self.device):
                forward(x, t, labels)

        times = self.timer.interleaved({"sample": sample, "forward": one_forward}, self.repeats, self.round_s)
        per_step, fwd = times["sample"] / steps, times["forward"]
        result = {"model": f"{size}/2", "samples": n, "steps": steps, "ms_per_step": round(per_step * 1e3, 3),
                  "ms_guided_forward": round(fwd * 1e3, 3), "loop_overhead": round(per_step / fwd, 3)}
        syncs = "-"
        if self.cuda:
            counts = [self.sync_count(lambda k=k: sample(k)) for k in (2, steps)]
            result["sync_calls"] = {"2 steps": counts[0], f"{steps} steps": counts[1]}
            result["per_step_syncs"] = round((counts[1] - counts[0]) / (steps - 2), 2)
            syncs = f"{counts[0]} / {counts[1]}"
        table(["model", "samples", "steps", "ms per step", "ms guided forward", "per step / forward",
               f"sync calls 2 / {steps} steps"],
              [[result["model"], n, steps, f"{per_step * 1e3:.3f}", f"{fwd * 1e3:.3f}",
                f"{result['loop_overhead']:.3f}", syncs]])
        if not self.cuda:
            print("sync count: CUDA only (torch.cuda.set_sync_debug_mode)")
        return result

    @staticmethod
    def sync_count(call: Callable[[], object]) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    # -- zoo fit vs a plain loop ---------------------------------------------------------------
    def fit_setup(self) -> dict:
        if self.quick:
            return dict(size="DiT-tiny", side=8, channels=1, batch=16, warmup=3, steps=10, classes=10)
        if self.cuda:
            return dict(size="DiT-B", side=32, channels=4, batch=64, warmup=8, steps=40, classes=1000)
        return dict(size="DiT-tiny", side=8, channels=1, batch=64, warmup=5, steps=30, classes=10)

    def part_zoo_fit(self) -> dict:
        s = self.fit_setup()
        precision = "bf16-mixed" if self.cuda else "32-true"
        model_args = dict(size=s["size"], patch_size=2, input_size=s["side"], in_channels=s["channels"],
                          num_classes=s["classes"], lr=1e-4)
        data_args = dict(side=s["side"], channels=s["channels"], num_classes=s["classes"], batch_size=s["batch"],
                         num_train=s["batch"] * (s["warmup"] + s["steps"]), num_val=s["batch"], num_test=s["batch"])
        total = s["warmup"] + s["steps"]
        runs = {}
        runs["plain"] = self.plain_loop(model_args, data_args, total)
        zoo, mode = self.zoo_loop(model_args, data_args, total, precision, finite_loss=True)
        runs["zoo"] = zoo
        runs["zoo without FiniteLoss"], _ = self.zoo_loop(model_args, data_args, total, precision, finite_loss=False)
        runs["plain (again)"] = self.plain_loop(model_args, data_args, total)
        plain = statistics.median([self.step_s(runs["plain"], s["warmup"]), self.step_s(runs["plain (again)"], s["warmup"])])
        rows, out = [], {}
        for name, stamps in runs.items():
            step = self.step_s(stamps, s["warmup"])
            out[name] = round(step * 1e3, 3)
            rows.append([name, f"{step * 1e3:.3f}", f"{step / plain:.3f}"])
        table([f"{s['size']}/2 {s['side']}x{s['side']}x{s['channels']}, batch {s['batch']}, {precision}",
               f"step ms (median of {s['steps']})", "x plain (goal <= 1.05)"], rows)
        print(f"zoo side: {mode}")
        return {"mode": mode, "step_ms": out, "ratio": round(out["zoo"] / (plain * 1e3), 3),
                "ratio_without_finite_loss": round(out["zoo without FiniteLoss"] / (plain * 1e3), 3),
                "setup": {**s, "precision": precision}}

    def stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def step_s(self, stamps: list, warmup: int) -> float:
        """Median seconds between consecutive step ends after ``warmup`` steps."""
        stamps = stamps[warmup - 1:]
        if self.cuda:
            stamps[-1].synchronize()
            gaps = [a.elapsed_time(b) / 1e3 for a, b in zip(stamps, stamps[1:])]
        else:
            gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return statistics.median(gaps)

    def plain_loop(self, model_args: dict, data_args: dict, total: int) -> list:
        from zoo.dit.conditional import ConditionalDiT

        torch.manual_seed(0)
        model = ConditionalDiT(**model_args).to(self.device)
        model.train()
        data = RandomImages(**data_args)
        data.setup("fit")
        optimizer = model.configure_optimizers()
        ema, live = list(model.ema.parameters()), list(model.net.parameters())
        stamps = []
        for step, (images, labels) in enumerate(data.train_dataloader()):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with autocast(self.device, enabled=self.cuda):
                loss = model.diffusion.training_loss(model.net, model.encode(images), y=labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            decay = min(model.hparams.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, live, 1 - decay)
            stamps.append(self.stamp())
            if len(stamps) == total:
                break
        return stamps

    def zoo_loop(self, model_args: dict, data_args: dict, total: int, precision: str, finite_loss: bool):
        from lightning.pytorch import Callback

        suite = self
        stamps: list = []

        class Stamps(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                stamps.append(suite.stamp())

        trainer_args = dict(accelerator="gpu" if self.cuda else "cpu", devices=1, precision=precision,
                            max_steps=total, max_epochs=1, limit_val_batches=0, enable_model_summary=False,
                            enable_checkpointing=False, log_every_n_steps=50)
        with tempfile.TemporaryDirectory() as root, quiet():
            why = None if available("jsonargparse") else "ZooCLI needs jsonargparse, not importable here (see --site)"
            if why is None:
                try:
                    from zoo.core.lightning_cli import TRAINER_DEFAULTS, ZooCLI
                except ImportError as err:
                    why = f"zoo.core.lightning_cli does not import ({err})"
            if why is not None:
                self.zoo_trainer(trainer_args, root, Stamps(), finite_loss).fit(*self.zoo_objects(model_args, data_args))
                return stamps, f"a Trainer with the zoo's callbacks, CSV logger and progress bar: {why}"
            config = {"seed_everything": 0, "trainer": {**trainer_args, "default_root_dir": root},
                      "model": {"class_path": "ConditionalDiT", "init_args": model_args},
                      "data": {"class_path": "gpu_suite.RandomImages", "init_args": data_args}}
            path = Path(root) / "config.json"  # JSON is YAML
            path.write_text(json.dumps(config))
            defaults = list(TRAINER_DEFAULTS["callbacks"])
            from zoo.core.checkpoint import FiniteLoss

            kept = [c for c in defaults if finite_loss or not isinstance(c, FiniteLoss)]
            TRAINER_DEFAULTS["callbacks"] = [*kept, Stamps()]
            try:
                ZooCLI(args=["fit", "--config", str(path)])
            finally:
                TRAINER_DEFAULTS["callbacks"] = defaults
        return stamps, "ZooCLI (what `python -m zoo fit` runs), progress bar on, checkpointing off, no validation"

    def zoo_objects(self, model_args: dict, data_args: dict):
        from zoo.dit.conditional import ConditionalDiT

        torch.manual_seed(0)
        return ConditionalDiT(**model_args), RandomImages(**data_args)

    @staticmethod
    def zoo_trainer(trainer_args: dict, root: str, stamps, finite_loss: bool):
        from lightning.pytorch import Trainer
        from lightning.pytorch.loggers import CSVLogger

        from zoo.core.callbacks import Curves, ProgressBar, RNGState
        from zoo.core.checkpoint import FiniteLoss

        callbacks = [RNGState(), Curves(), *([FiniteLoss()] if finite_loss else []), ProgressBar(), stamps]
        return Trainer(**trainer_args, default_root_dir=root, callbacks=callbacks,
                       logger=CSVLogger(root, name=None))

    # -- MFU -----------------------------------------------------------------------------------
    def part_mfu(self) -> dict:
        from torch.utils.flop_counter import FlopCounterMode

        from zoo.dit.model import dit

        peak = getattr(self, "peak", None)
        if peak is None:
            raise Skip("no bf16 peak: the `peak` part did not run")
        size, patch, side, channels, batch = (DIT_QUICK[0] if self.quick else
                                              next(c for c in DIT_CASES if c[0] == ("DiT-XL" if self.cuda else "DiT-S")))
        name = f"{size}/{patch}"
        torch.manual_seed(0)
        net = dit(size, patch_size=patch, input_size=side, in_channels=channels, num_classes=1000).to(self.device)
        train, _ = self.dit_calls(net, net, self.dit_inputs(side, channels, batch))
        with FlopCounterMode(display=False) as counter:
            train()
        flops = counter.get_total_flops()
        eager_ms = getattr(self, "dit_times", {}).get(name, {}).get("train_ms_zoo")
        if eager_ms is None:
            eager_ms = self.timer.interleaved({"train": train}, self.repeats, self.round_s)["train"] * 1e3
        compiled_ms = getattr(self, "dit_compiled", {}).get(name, {}).get("train_ms_compiled")
        rows, out = [], {"model": name, "batch": batch, "train_step_tflop": round(flops / 1e12, 3),
                         "peak_tflops": round(peak, 2)}
        for label, ms in (("eager", eager_ms), ("compiled", compiled_ms)):
            if ms is None:
                rows.append([name, label, "-", "-", "not measured (dit_compiled did not run)"])
                continue
            achieved = flops / (ms / 1e3) / 1e12
            out[f"mfu_{label}"] = round(achieved / peak, 4)
            out[f"train_ms_{label}"] = ms
            rows.append([name, label, f"{ms:.2f}", f"{achieved:.1f}", f"{100 * achieved / peak:.1f}%"])
        table([f"{name} batch {batch}, {flops / 1e12:.2f} TFLOP/step", "zoo", "train step ms", "TFLOP/s",
               f"MFU vs measured bf16 peak {peak:.1f} TFLOP/s (goal >= 40%)"], rows)
        return out

    # -- the CLI with the trainer fragments ------------------------------------------------------
    def part_cli(self) -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), self.args.site or "",
                                                                         os.environ.get("PYTHONPATH", "")]))}
        probe = subprocess.run([sys.executable, "-c", "import jsonargparse"], env=env, capture_output=True)
        if probe.returncode:
            raise Skip("jsonargparse is not importable, so `python -m zoo` cannot parse a config; stage it with "
                       "`python benchmarks/gpu_suite.py --stage-site .whl/site` where it is installed, carry "
                       ".whl/, and pass --site .whl/site")
        spec = importlib.util.find_spec("jsonargparse") if available("jsonargparse") else None
        installed = spec is not None and not (self.args.site and str(spec.origin).startswith(self.args.site))
        source = "installed" if installed else f"from --site {self.args.site}"
        rows, out = [], {}
        for fragment in CLI_FRAGMENTS:
            if fragment != "bf16" and not self.cuda:
                out[fragment] = {"status": "skipped", "reason": "needs CUDA"}
                rows.append([fragment, "skipped", "-", "needs CUDA"])
                continue
            if self.left() < 15:
                out[fragment] = {"status": "skipped", "reason": "budget"}
                rows.append([fragment, "skipped", "-", "budget"])
                continue
            with tempfile.TemporaryDirectory() as root:
                cmd = [sys.executable, "-m", "zoo", "fit", "--config", self.args.cli_config,
                       "--config", f"configs/trainer/{fragment}.yaml", "--trainer.fast_dev_run=true",
                       f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
                start = time.perf_counter()
                try:
                    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                          timeout=max(10.0, min(120.0, self.left())))
                    code, tail = done.returncode, (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                except subprocess.TimeoutExpired:
                    code, tail = "timeout", ["timed out"]
            seconds = time.perf_counter() - start
            ok = code == 0
            out[fragment] = {"status": "ok" if ok else "failed", "returncode": code, "seconds": round(seconds, 1),
                             **({} if ok else {"last_line": tail[0][:300]})}
            rows.append([fragment, "ok" if ok else f"FAILED ({code})", f"{seconds:.1f}", "" if ok else tail[0][:160]])
        table([f"python -m zoo fit --config {self.args.cli_config} --config configs/trainer/<fragment>.yaml "
               "--trainer.fast_dev_run true", "result", "s", "note"], rows)
        print(f"jsonargparse: {source}")
        return {"config": self.args.cli_config, "jsonargparse": source, "fragments": out}


class RandomImages(SyntheticDataModule):
    """Images in [0, 1] ``[n, channels, side, side]`` with labels in ``[0, num_classes)``: the data of
    the ``zoo_fit`` part (the DiT's step costs the same on any values)."""

    def __init__(self, side: int = 32, channels: int = 4, num_classes: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.side, self.channels, self.num_classes = side, channels, num_classes

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        images = torch.rand(n, self.channels, self.side, self.side, generator=generator)
        return images, torch.randint(0, self.num_classes, (n,), generator=generator)


def stage_site(folder: str) -> None:
    """Copy the CLI's pure-Python dependencies from this environment into ``folder``."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for name in CLI_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{name} is not installed here: nothing to stage")
        source = Path(spec.origin).parent
        shutil.copytree(source, target / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        print(f"staged {name} from {source}")
    print(f"now: python benchmarks/gpu_suite.py --site {folder}")


def environment(args: argparse.Namespace) -> dict:
    found = {name: available(name) for name in ("diffusers", "ndlinear", "jsonargparse", "sklearn", "wandb", "Bio")}
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(args.device),
            "packages": found}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        info["cuda"] = torch.version.cuda
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round: checks the suite itself")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budget", type=float, default=290.0, help="seconds; parts that would start later are skipped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round-s", type=float, default=0.25, help="seconds per timed round per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cli-config", default="configs/dit/latent_subspace.yaml",
                        help="the small config the `cli` part fits (synthetic data: no downloads, no scikit-learn)")
    parser.add_argument("--site", default=None, help="folder put first on sys.path and the CLI runs' PYTHONPATH "
                        "(from --stage-site): jsonargparse where it is not installed")
    parser.add_argument("--stage-site", default=None, metavar="DIR", help="copy jsonargparse and its pure-Python "
                        "dependencies from this environment into DIR, then exit")
    parser.add_argument("--compile-on-cpu", action="store_true", help="run `dit_compiled` on a CPU too (slow)")
    parser.add_argument("--json", default=None, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    if args.stage_site:
        stage_site(args.stage_site)
        return {}
    if args.site:
        args.site = str(Path(args.site).resolve())
        sys.path.insert(0, args.site)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu (and --quick for a check of the suite)")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = environment(args)
    print(f"# gpu_suite: torch {info['torch']}, {info.get('gpu', info['machine'])}, device {args.device}, "
          f"{info['threads']} threads{', --quick' if args.quick else ''}, budget {args.budget:.0f} s")
    print("packages: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["packages"].items()))
    suite = Suite(args)
    suite.run(parts)
    total = time.perf_counter() - suite.start
    print("\n## summary")
    table(["part", "status", "s", "note"],
          [[name, r["status"], r["seconds"], r.get("reason") or r.get("error") or r.get("note") or ""]
           for name, r in suite.results.items()])
    print(f"total {total:.0f} s")
    line = {"benchmark": "gpu_suite", "quick": args.quick, "total_s": round(total, 1), "environment": info,
            "parts": suite.results}
    text = json.dumps(line, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return line


if __name__ == "__main__":
    main()
