"""``python -m zoo dp-strings build|query`` (numpy only: this command does not import torch or Lightning)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from zoo.core.errors import ConfigError, MalformedDataError
from zoo.dp_strings.index import KINDS, UNITS, DPEditIndex, DPHammingIndex, load, read_strings


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zoo dp-strings build|query``: release a private index of a file of 0/1 strings, then
    estimate distances of query strings to all of them."""
    parser = argparse.ArgumentParser(prog="python -m zoo dp-strings", description=main.__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="sketch, flip and save a database (the only step that sees it)")
    build.add_argument("database", help="text file, one 0/1 string per line, all of one length n")
    build.add_argument("--out", required=True, help="where to write the released index (.npz)")
    build.add_argument("--epsilon", type=float, required=True, help="privacy budget per unit, > 0")
    build.add_argument("--k", type=int, required=True, help="distance bound the sketch is sized for, 1..n")
    build.add_argument("--distance", choices=KINDS, default="hamming")
    build.add_argument("--unit", choices=UNITS, default="string",
                       help="privacy unit: one whole string (default) or one position of one string")
    build.add_argument("--seed", type=int, default=0, help="seed of the public hashes (the noise is never seeded)")
    query = commands.add_parser("query", help="distance estimates of each query to every database string")
    query.add_argument("index", help="an index written by `build`")
    query.add_argument("queries", help="text file, one 0/1 string of length n per line")
    query.add_argument("--out", help="write a CSV (one row per query, one column per database string) here "
                                     "instead of printing")
    args = parser.parse_args(argv)
    if args.command == "build":
        cls = DPHammingIndex if args.distance == "hamming" else DPEditIndex
        index = cls(read_strings(args.database), args.epsilon, args.k, args.seed, args.unit)
        index.save(args.out)
        print(f"{args.out}: {args.distance} index of m = {index.m} strings of n = {index.n} bits, epsilon = "
              f"{index.epsilon:g} per {index.unit}, k = {index.k}, {index.sensitivity()} bits per unit, "
              f"flip probability {index.p:.4g}")
        return
    index = load(args.index)
    queries = read_strings(args.queries)
    if queries.shape[1] != index.n:
        raise MalformedDataError(f"{args.queries}: queries have length {queries.shape[1]}, but {args.index} "
                                 f"indexes strings of length n = {index.n}")
    rows = [index.query(b) for b in queries]
    text = "\n".join(",".join(f"{v:.2f}" for v in row) for row in rows) + "\n"
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as err:
            raise ConfigError(f"--out {args.out}: cannot write the estimates ({err.strerror or err})") from err
    else:
        sys.stdout.write(text)
