"""The embedded text corpora: byte tokenizer, split by document, next-token blocks."""

from __future__ import annotations

import pytest
import torch

from data_modules.text import DOCSTRING_MODULES, ByteTokenizer, TextDataModule, load_corpus
from zoo.core.errors import ConfigError


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = ByteTokenizer()
    assert tokenizer.vocab_size == 259
    for text in ("", "def f(x):\n    return x  # ok", "naïve café ∑ 数学 🐍", "\x00\xff"):
        ids = tokenizer.encode(text, bos=True, eos=True)
        assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
        assert all(0 <= i < 256 for i in ids[1:-1])
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(torch.tensor(ids)) == text
    with pytest.raises(ConfigError, match="token id 259 is out of range"):
        tokenizer.decode([259])


def test_split_is_by_document_and_reproducible():
    names = set(load_corpus("pydoc_topics"))
    assert len(names) == 79
    a, b, other = (TextDataModule(seed=seed) for seed in (0, 0, 1))
    for dm in (a, b, other):
        dm.setup("fit")
    parts = [set(a.split_names[s]) for s in ("train", "val", "test")]
    assert set.union(*parts) == names and sum(map(len, parts)) == len(names), "disjoint, complete"
    assert [len(p) for p in parts] == [63, 8, 8]
    assert a.split_names == b.split_names and torch.equal(a.test_set.windows, b.test_set.windows)
    assert a.split_names["test"] != other.split_names["test"]
    tokenizer, documents = ByteTokenizer(), load_corpus("pydoc_topics")
    expected = [t for name in a.split_names["val"] for t in tokenizer.encode(documents[name], bos=True, eos=True)]
    assert a.split_tokens["val"].tolist() == expected


def test_blocks_are_consecutive_and_shift_by_one():
    dm = TextDataModule(block_size=32, batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    inputs, labels = batch["inputs"], batch["labels"]
    assert inputs.shape == labels.shape == (5, 32)
    assert torch.equal(inputs[:, 1:], labels[:, :-1]), "labels are the inputs shifted by one"
    assert torch.equal(labels[:-1, -1], inputs[1:, 0]), "consecutive windows"
    tokens = dm.split_tokens["val"]
    assert torch.equal(inputs.flatten(), tokens[: 5 * 32]) and torch.equal(labels.flatten(), tokens[1 : 5 * 32 + 1])
    assert len(dm.val_set) == (len(tokens) - 1) // 32


def test_stdlib_docstrings_has_one_document_per_module():
    documents = load_corpus("stdlib_docstrings")
    assert set(documents) == set(DOCSTRING_MODULES)
    assert "JSON" in documents["json"] and "dumps: " in documents["json"]


@pytest.mark.parametrize("kwargs, message", [
    ({"corpus": "wikipedia"}, "unknown corpus 'wikipedia'; available: pydoc_topics, stdlib_docstrings"),
    ({"block_size": 0}, "block_size must be a positive integer, got 0"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction + test_fraction must be < 1"),
    ({"test_fraction": 0.0}, "test_fraction must be in (0, 1), got 0.0"),
])
def test_bad_arguments_raise_one_line(kwargs, message):
    with pytest.raises(ConfigError) as error:
        TextDataModule(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
