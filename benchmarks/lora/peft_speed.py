"""LoRA fine-tuning step time and memory: the zoo's adapters against PEFT on the same model.

One random Hugging Face ``LlamaForCausalLM`` (nothing downloaded; ``--hidden`` 256, 4 layers, 8 query
/ 4 key-value heads, SwiGLU 688, vocabulary 2,048, untied head: 3.7 M parameters) gets rank-``r``
adapters three ways, for each set of target modules in ``--cases``:

- ``peft``: ``peft.get_peft_model(hf, LoraConfig(r, lora_alpha, target_modules, lora_dropout=0))``;
- ``zoo``: the zoo's own LM loaded from the same weights (``CausalLM.from_hf``) with
  ``zoo.lora.apply_lora`` (``mark_only_lora_as_trainable``);
- ``zoo_on_hf``: ``zoo.lora.apply_lora`` on a copy of the Hugging Face model itself (the adapters
  alone differ from ``peft``).

Also timed: one adapted ``q_proj`` alone (``--hidden`` -> ``--hidden`` on ``--batch`` x ``--length``
rows, forward + backward into the input), PEFT's ``lora.Linear`` against the zoo's ``LoRALinear``.
Speed-ups are PEFT's median over the other's, with the number of interleaved rounds in which the
other was faster (a check on a noisy machine).

The zoo's adapters get PEFT's A and a shared random B (so every model computes the same function;
the losses are checked to agree before timing). A training step is forward, next-token
cross-entropy, backward and AdamW (lr 1e-4) over the adapter parameters, on ``--batch`` x
``--length`` random tokens (fp32). After one warm-up step each, ``--repeats`` rounds time
``--iters`` steps of each model in turn (interleaved, same process, same threads, same shapes); the
median per step is reported.

Memory (CPU, no allocator statistics there), per model:

- ``saved``: bytes of the tensors autograd keeps for backward during one step's forward
  (``torch.autograd.graph.saved_tensors_hooks``, distinct storages, parameters excluded);
- ``state``: parameters + gradients + AdamW state after a step;
- ``peak``: the largest total of live CPU tensor bytes during one step, from the PyTorch profiler's
  memory timeline (``torch.profiler.profile(profile_memory=True, record_shapes=True,
  with_stack=True)`` then ``export_memory_timeline(device="cpu")``).

On CUDA (``--device cuda``) ``peak`` is ``torch.cuda.max_memory_allocated`` over one step instead.

    python benchmarks/lora/peft_speed.py [--threads 1] [--repeats 7] [--iters 2]

Prints a table and one JSON line; writes the JSON to ``docs/lora/peft_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaConfig, LlamaForCausalLM

from zoo.lora import LoRALinear, apply_lora, mark_only_lora_as_trainable
from zoo.nn.causal_lm import CausalLM

warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
warnings.filterwarnings("ignore", "`export_memory_timeline` is deprecated", FutureWarning)

CASES = {
    "partial": ("q_proj", "v_proj"),
    "full": ("q_proj", "k_proj", "v_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
VARIANTS = ("peft", "zoo", "zoo_on_hf")


def hf_model(args) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=args.length, tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def build(args, base: LlamaForCausalLM, targets: tuple[str, ...]) -> dict[str, tuple[nn.Module, object]]:
    """``{variant: (model, forward(ids) -> logits)}``, all with the same adapter weights."""
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=args.alpha,
                                                            target_modules=list(targets), lora_dropout=0.0))
    ours = CausalLM.from_hf(base)
    on_hf = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in theirs.base_model.model.modules():
            if hasattr(module, "lora_B") and isinstance(module.lora_B, nn.ModuleDict):
                module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape,
                                                                  generator=generator) * 0.02)
    for model in (ours, on_hf):
        apply_lora(model, targets, r=args.rank, alpha=args.alpha)
        mark_only_lora_as_trainable(model)
        with torch.no_grad():
            for name, layer in model.named_modules():
                if isinstance(layer, LoRALinear):
                    source = theirs.base_model.model.get_submodule(name)
                    layer.lora_A.copy_(source.lora_A["default"].weight)
                    layer.lora_B.copy_(source.lora_B["default"].weight)
    return {"peft": (theirs, lambda ids: theirs(input_ids=ids).logits),
            "zoo": (ours, lambda ids: ours(ids)),
            "zoo_on_hf": (on_hf, lambda ids: on_hf(input_ids=ids).logits)}


def loss_of(forward, ids: torch.Tensor) -> torch.Tensor:
    logits = forward(ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def saved_bytes(model: nn.Module, forward, ids: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward (parameters excluded)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of(forward, ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del loss
    return sum(size for ptr, size in storages.items() if ptr not in params)


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + gradients + optimizer state, in bytes."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def peak_bytes(step, device: torch.device) -> int:
    """The most bytes of live tensors on ``device`` during one ``step()`` (module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


def run_case(args, base: LlamaForCausalLM, case: str, ids: torch.Tensor) -> dict:
    models = build(args, base, CASES[case])
    for model, _ in models.values():
        model.to(args.device).train()
    with torch.no_grad():
        losses = {name: loss_of(forward, ids).item() for name, (_, forward) in models.items()}
    spread = max(losses.values()) - min(losses.values())
    assert spread < 1e-4, f"the three models disagree before training: {losses}"
    optimizers = {name: torch.optim.AdamW(trainable(model), lr=1e-4) for name, (model, _) in models.items()}

    def step(name: str) -> None:
        model, forward = models[name]
        loss = loss_of(forward, ids)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    def sync() -> None:
        if args.device.type == "cuda":
            torch.cuda.synchronize()

    for name in models:
        step(name)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name in models:
            sync()
            start = time.perf_counter()
            for _ in range(args.iters):
                step(name)
            sync()
            times[name].append((time.perf_counter() - start) / args.iters)
    row = {"case": case, "targets": list(CASES[case]), "loss_spread": spread}
    for name, (model, forward) in models.items():
        row[name] = {
            "ms": statistics.median(times[name]) * 1e3,
            "ms_rounds": [t * 1e3 for t in times[name]],
            "trainable": sum(p.numel() for p in trainable(model)),
            "saved_mb": saved_bytes(model, forward, ids) / 2**20,
            "state_mb": state_bytes(model, optimizers[name]) / 2**20,
            "peak_mb": peak_bytes(lambda: step(name), args.device) / 2**20,
        }
    counts = {row[name]["trainable"] for name in VARIANTS}
    assert len(counts) == 1, f"trainable parameter counts differ: {counts}"
    return row


class OneLinear(nn.Module):
    """A single ``q_proj``: the adapted layer alone, as PEFT and the zoo wrap it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def run_layer(args) -> dict:
    """Forward + backward (into the input too, as inside a network) of one adapted ``q_proj``
    ``[batch x length, hidden] -> [.., hidden]``: PEFT's ``lora.Linear`` against ``LoRALinear``."""
    torch.manual_seed(0)
    base = OneLinear(args.hidden).to(args.device)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank, lora_alpha=args.alpha,
                                                            target_modules=["q_proj"], lora_dropout=0.0))
    ours = copy.deepcopy(base)
    apply_lora(ours, "q_proj", r=args.rank, alpha=args.alpha)
    x = torch.randn(args.batch * args.length, args.hidden, device=args.device, requires_grad=True)
    models = {"peft": theirs, "zoo": ours}

    def step(name: str) -> None:
        models[name](x).sum().backward()

    for name in models:
        step(name)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name in models:
            start = time.perf_counter()
            for _ in range(args.layer_iters):
                step(name)
            if args.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.layer_iters)
    return {name: {"ms": statistics.median(t) * 1e3, "ms_rounds": [v * 1e3 for v in t]} for name, t in times.items()}


def speedup(anchor: dict, other: dict) -> dict:
    """PEFT's time over ``other``'s: of the medians, and per interleaved round (how many rounds it won)."""
    rounds = [a / b for a, b in zip(anchor["ms_rounds"], other["ms_rounds"])]
    return {"median": anchor["ms"] / other["ms"], "rounds_faster": sum(r > 1 for r in rounds), "rounds": len(rounds)}


def shown(speed: dict) -> str:
    return f"{speed['median']:.3f}x ({speed['rounds_faster']}/{speed['rounds']})"


def joined(row: dict, key: str, spec: str) -> str:
    """``row[v][key]`` of the three variants, ``a / b / c``."""
    return " / ".join(format(row[v][key], spec) for v in VARIANTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--layer-iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[2] / "docs" / "lora" / "peft_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = hf_model(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), generator=torch.Generator().manual_seed(2))
    ids = ids.to(args.device)
    rows = [run_case(args, base, case, ids) for case in args.cases]
    layer = run_layer(args)

    memory = ("CUDA max_memory_allocated" if args.device.type == "cuda" else
              "profiler memory timeline (live CPU tensor bytes)")
    print(f"machine: {platform.machine()}, device {args.device}, torch {torch.__version__}, threads {args.threads}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"model: LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} heads, "
          f"SwiGLU {args.intermediate}, vocab {args.vocab}, {sum(p.numel() for p in base.parameters()):,} parameters; "
          f"batch {args.batch} x {args.length} tokens, fp32, r = {args.rank}, alpha = {args.alpha}")
    print(f"step = forward + cross-entropy + backward + AdamW; median of {args.repeats} interleaved rounds x "
          f"{args.iters} steps; peak: {memory}\n")
    print("| targets | trainable | step ms peft / zoo / zoo_on_hf | peft / zoo (rounds zoo faster) | "
          "peft / zoo_on_hf (rounds) | saved for backward MB peft / zoo / zoo_on_hf | params+grads+AdamW MB | "
          "peak MB peft / zoo / zoo_on_hf |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for name in VARIANTS[1:]:
            row[f"speedup_{name}"] = speedup(row["peft"], row[name])
        print(f"| {row['case']} | {row['peft']['trainable']:,} | {joined(row, 'ms', '.1f')} | "
              f"{shown(row['speedup_zoo'])} | {shown(row['speedup_zoo_on_hf'])} | {joined(row, 'saved_mb', '.1f')} | "
              f"{joined(row, 'state_mb', '.2f')} | {joined(row, 'peak_mb', '.1f')} |")
    layer["speedup_zoo"] = speedup(layer["peft"], layer["zoo"])
    print(f"\none adapted q_proj alone ({args.batch * args.length} x {args.hidden} -> {args.hidden}, r = {args.rank}, "
          f"forward + backward into the input; median of {args.repeats} rounds x {args.layer_iters} calls): "
          f"peft {layer['peft']['ms']:.2f} ms, zoo {layer['zoo']['ms']:.2f} ms, peft / zoo {shown(layer['speedup_zoo'])}")
    out = {"benchmark": "lora_vs_peft", "machine": platform.machine(), "device": str(args.device),
           "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "memory": memory,
           "model": {"hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers,
                     "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab,
                     "params": sum(p.numel() for p in base.parameters())},
           "batch": args.batch, "length": args.length, "rank": args.rank, "alpha": args.alpha,
           "repeats": args.repeats, "iters": args.iters, "rows": rows,
           "layer": {"shape": [args.batch * args.length, args.hidden, args.hidden], "iters": args.layer_iters, **layer}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
