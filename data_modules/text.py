"""Plain text for causal language modelling from corpora embedded in Python itself (no download).

Corpora (``corpus``):

- ``"pydoc_topics"``: the standard library's ``pydoc_data.topics.topics``, the help texts behind
  ``help("if")``, ``help("FORMATTING")`` and the like (79 documents, ~465 KB on CPython 3.12);
  one document per topic name.
- ``"stdlib_docstrings"``: the docstrings of the standard-library modules in
  :data:`DOCSTRING_MODULES`, one document per module: ``inspect.getdoc`` of the module, then of each
  public function and class it defines (names from ``__all__``, else the public names whose
  ``__module__`` is the module), in sorted order, separated by blank lines. A second text domain
  for fine-tuning; its exact text follows the running Python version.

Documents are split, not blocks: a seeded permutation of the sorted document names assigns whole
documents to train / val / test (``seeded_split``), so no held-out text was seen in training
(``split_names`` records which went where). Each split is the concatenation of its documents, each
one ``<bos> bytes <eos>``, cut into consecutive, non-overlapping windows of ``block_size + 1``
tokens; a sample is ``inputs = window[:-1]``, ``labels = window[1:]`` (next-token targets), and
the split's last, partial window is dropped.

Tokenizer: :class:`ByteTokenizer`, the UTF-8 bytes 0..255 plus ``<bos>`` (256), ``<eos>`` (257)
and ``<pad>`` (258): vocabulary 259, ``decode(encode(text)) == text`` for every string.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import Tensor
from torch.utils.data import Dataset

from data_modules.base import ZooDataModule, seeded_split
from zoo.core.errors import ConfigError

__all__ = ["CORPORA", "DOCSTRING_MODULES", "BlockSet", "ByteTokenizer", "TextDataModule", "load_corpus"]

CORPORA = ("pydoc_topics", "stdlib_docstrings")

#: The modules whose docstrings make the ``stdlib_docstrings`` corpus (one document each).
DOCSTRING_MODULES = (
    "abc", "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools", "gzip",
    "hashlib", "heapq", "hmac", "inspect", "io", "ipaddress", "itertools", "json", "logging",
    "operator", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "secrets", "shlex",
    "shutil", "socket", "statistics", "string", "struct", "subprocess", "tempfile", "textwrap",
    "threading", "timeit", "typing", "unittest", "uuid", "warnings", "zipfile", "zlib",
)


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255, then ``<bos>`` = 256, ``<eos>`` = 257, ``<pad>`` = 258."""

    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes), optionally wrapped in ``<bos>`` / ``<eos>``."""
        if not isinstance(text, str):
            raise ConfigError(f"ByteTokenizer.encode needs a str, got {type(text).__name__}")
        return [self.bos_id] * bos + list(text.encode("utf-8")) + [self.eos_id] * eos

    def decode(self, ids: Tensor | list[int]) -> str:
        """The text of ``ids``: special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in values if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ConfigError(f"token id {bad[0]} is out of range 0 .. {self.vocab_size - 1}")
        return bytes(int(i) for i in values if i < 256).decode("utf-8", errors="replace")


def _module_docstrings(name: str) -> str:
    module = importlib.import_module(name)
    public = getattr(module, "__all__", None)
    parts = [inspect.getdoc(module) or ""]
    for attr in sorted(public if public is not None else dir(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if public is None and getattr(obj, "__module__", None) != name:
            continue
        doc = inspect.getdoc(obj)
        if doc:
            parts.append(f"{attr}: {doc}")
    return "\n\n".join(p for p in parts if p)


def load_corpus(corpus: str) -> dict[str, str]:
    """``{document name: text}`` of an embedded corpus (module docstring), sorted by name."""
    if corpus == "pydoc_topics":
        from pydoc_data.topics import topics

        documents = dict(topics)
    elif corpus == "stdlib_docstrings":
        documents = {name: _module_docstrings(name) for name in DOCSTRING_MODULES}
    else:
        raise ConfigError(f"unknown corpus {corpus!r}; available: {', '.join(CORPORA)}")
    return {name: documents[name] for name in sorted(documents) if documents[name]}


class BlockSet(Dataset):
    """Windows ``[N, block_size + 1]`` served a batch at a time as ``{"inputs", "labels"}``
    (``window[:, :-1]`` and ``window[:, 1:]``)."""

    def __init__(self, windows: Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        windows = self.windows[torch.as_tensor(indices, dtype=torch.long)]
        return {"inputs": windows[:, :-1], "labels": windows[:, 1:]}


class TextDataModule(ZooDataModule):
    """Next-token blocks of an embedded text corpus, split by document (module docstring).

    Args:
        corpus: ``"pydoc_topics"`` (default) or ``"stdlib_docstrings"``.
        block_size: tokens per sample (each sample reads ``block_size + 1`` consecutive tokens).
        val_fraction, test_fraction: shares of the documents held out (seeded by ``seed``).
        batch_size, num_workers, seed: as :class:`ZooDataModule`.
    """

    def __init__(self, corpus: str = "pydoc_topics", block_size: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(None, batch_size, num_workers, seed)
        if corpus not in CORPORA:
            raise ConfigError(f"unknown corpus {corpus!r}; available: {', '.join(CORPORA)}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
        for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ConfigError(f"{label} must be in (0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
        self.corpus, self.block_size = corpus, block_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.tokenizer = ByteTokenizer()
        self.split_names: dict[str, list[str]] = {}
        self.split_tokens: dict[str, Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.split_tokens:
            return
        documents = load_corpus(self.corpus)
        names = list(documents)
        parts = seeded_split(len(names), [self.val_fraction, self.test_fraction], self.seed)
        for split, index in zip(("train", "val", "test"), parts):
            chosen = sorted(names[i] for i in index.tolist())
            if not chosen:
                raise ConfigError(f"TextDataModule: the {split} split of {len(names)} {self.corpus} documents is "
                                  f"empty; raise {split}_fraction")
            ids = [t for name in chosen for t in self.tokenizer.encode(documents[name], bos=True, eos=True)]
            tokens = torch.tensor(ids, dtype=torch.long)
            count = (len(tokens) - 1) // self.block_size
            if count < 1:
                raise ConfigError(f"TextDataModule: the {split} split has {len(tokens)} tokens, fewer than "
                                  f"block_size + 1 = {self.block_size + 1}")
            self.split_names[split], self.split_tokens[split] = chosen, tokens
            starts = torch.arange(count) * self.block_size
            windows = tokens[starts[:, None] + torch.arange(self.block_size + 1)]
            setattr(self, f"{split}_set", BlockSet(windows))
