"""``python -m zoo deal``: trace an aligned teacher, find the modules that carry its refusals by
delta debugging, transplant them into an unaligned student and measure (``zoo.deal.experiment``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zoo deal --teacher deal-aligned --student deal-unaligned --out runs/deal``."""
    parser = argparse.ArgumentParser(prog="python -m zoo deal", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="deal-aligned", help="aligned LM: registered name or checkpoint path")
    parser.add_argument("--student", default="deal-unaligned", help="unaligned LM fine-tuned from the same base")
    parser.add_argument("--base", default="deal-base", help="their base, measured beside them ('none' to skip)")
    parser.add_argument("--out", default="runs/deal", help="folder for results.json and the PNGs")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="a site set passes when its validation DSR reaches this share of all MLPs' (0, 1]")
    parser.add_argument("--random-sets", type=int, default=5, help="random layer sets of the found size")
    parser.add_argument("--trace-prompts", type=int, default=12, help="harmful requests to trace (0: no tracing)")
    parser.add_argument("--trace-samples", type=int, default=10, help="noise draws per traced request")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length when measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from zoo.core.lm import load_causal_lm
    from zoo.deal.experiment import run_deal

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    teacher, _ = load_causal_lm(args.teacher, "--teacher")
    student, _ = load_causal_lm(args.student, "--student")
    base = None if args.base == "none" else load_causal_lm(args.base, "--base")[0]
    run_deal(teacher, student, args.out, base=base, threshold=args.threshold, random_sets=args.random_sets,
             trace_prompts=args.trace_prompts, trace_samples=args.trace_samples, seed=args.seed,
             max_new_tokens=args.max_new_tokens)
    print(f"wrote {args.out}/results.json, trace_layers.png, trace_example.png, transplants.png")
