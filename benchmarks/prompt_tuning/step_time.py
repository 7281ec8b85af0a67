"""Training-step time of prompt tuning against LoRA and full fine-tuning on the shipped ``lm-pydoc``.

The modules of the docstrings experiments (``configs/prompt_tuning/docstrings.yaml`` and
``configs/lora/finetune_docstrings.yaml``), built on the registered base ``lm-pydoc``:

- ``prompt m=M``: ``PromptTuneLM(num_virtual_tokens=M)``, M in ``--prompts`` (the sequence grows to
  ``128 + M`` positions; only the ``M x 64`` prompt trains);
- ``lora r=4``: ``LoRAFineTune(lora_rank=4)`` (partial: q_proj, v_proj);
- ``full``: ``LoRAFineTune(full_finetune=True)`` (every weight trains).

A step is what ``training_step`` does plus the optimizer: the token-mean next-token NLL of one
training batch (32 blocks of 128 byte tokens of the ``stdlib_docstrings`` train split), backward,
AdamW over the trainable parameters, ``zero_grad``. ``eval`` is one ``no_grad`` forward of the same
batch (the cost at inference: a prompt lengthens every sequence, LoRA can be merged). After a
warm-up, ``--repeats`` interleaved rounds time ``--iters`` steps of each module in turn (same
process, same threads, same batch); the median per step is reported.

    python benchmarks/prompt_tuning/step_time.py [--threads 1] [--repeats 7] [--iters 3]

Prints a table and one JSON line; writes the JSON to ``docs/prompt_tuning/step_time.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from data_modules.text import TextDataModule
from zoo.lora import LoRAFineTune
from zoo.prompt_tuning import PromptTuneLM


def modules(prompts: list[int]) -> dict[str, torch.nn.Module]:
    built = {f"prompt m={m}": PromptTuneLM(num_virtual_tokens=m) for m in prompts}
    built["lora r=4"] = LoRAFineTune(lora_rank=4)
    built["full"] = LoRAFineTune(full_finetune=True)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[2] / "docs" / "prompt_tuning" / "step_time.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = TextDataModule(corpus="stdlib_docstrings", block_size=128, batch_size=32, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    built = modules(args.prompts)
    optimizers = {}
    for name, module in built.items():
        module.train()
        optimizers[name] = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step(name: str) -> None:
        loss = built[name].token_nll(batch).mean()
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def forward(name: str) -> None:
        with torch.no_grad():
            built[name].token_nll(batch)

    times: dict[str, dict[str, list[float]]] = {name: {"step": [], "eval": []} for name in built}
    for name in built:  # warm-up
        step(name)
        forward(name)
    for _ in range(args.repeats):
        for name in built:
            for kind, call in (("step", step), ("eval", forward)):
                start = time.perf_counter()
                for _ in range(args.iters):
                    call(name)
                times[name][kind].append((time.perf_counter() - start) / args.iters)

    rows = []
    for name, module in built.items():
        rows.append({
            "run": name,
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "positions": 128 + (module.hparams.num_virtual_tokens if isinstance(module, PromptTuneLM) else 0),
            "step_ms": round(1e3 * statistics.median(times[name]["step"]), 1),
            "eval_ms": round(1e3 * statistics.median(times[name]["eval"]), 1),
        })
    print(f"{'run':<14}{'trainable':>11}{'positions':>11}{'step ms':>10}{'eval ms':>10}")
    for row in rows:
        print(f"{row['run']:<14}{row['trainable']:>11,}{row['positions']:>11}{row['step_ms']:>10.1f}"
              f"{row['eval_ms']:>10.1f}")
    out = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
           "torch": torch.__version__.split("+")[0], "batch": [32, 128], "repeats": args.repeats,
           "iters": args.iters, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
