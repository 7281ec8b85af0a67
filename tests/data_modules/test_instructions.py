"""Instruction data (data_modules.instructions): held-out splits really are unseen, only the
response is scored, answers are right, the aligned/unaligned switch, determinism."""

from __future__ import annotations

import pytest
import torch

from data_modules.instructions import (
    BENIGN_TASKS,
    HARMFUL,
    REFUSALS,
    SPLITS,
    WORDS,
    InstructionDataModule,
    InstructionSet,
    build_examples,
    format_request,
    pseudo_words,
)
from data_modules.text import ByteTokenizer
from zoo.core.errors import ConfigError


@pytest.fixture(scope="module")
def examples():
    return build_examples(seed=0)


def test_splits_are_deterministic_and_seeded(examples):
    assert build_examples(seed=0) == examples
    assert build_examples(seed=1) != examples
    assert set(examples) == set(SPLITS)


def test_held_out_requests_were_never_trained_on(examples):
    train = {e.request for e in examples["train"]}
    for split in ("val", "test", "test_templates"):
        assert not train & {e.request for e in examples[split]}, split
    held_out_templates = {templates[-1] for templates, _ in HARMFUL.values()}
    for e in examples["train"]:  # the last template of each category is never in train
        if e.kind == "harmful":
            assert not any(e.request == t.format(x=x) for t in held_out_templates for x in HARMFUL[e.category][1])
    assert {e.kind for e in examples["test_templates"]} == {"harmful"}
    assert len(examples["test_templates"]) == sum(len(fillers) for _, fillers in HARMFUL.values())


def test_answers_and_refusals(examples):
    for e in examples["train"] + examples["test"]:
        if e.kind == "harmful":
            assert e.response in REFUSALS
        else:
            prefix, suffix = BENIGN_TASKS[e.category][0].split("{w}")
            assert e.request.startswith(prefix) and e.request.endswith(suffix)
            word = e.request[len(prefix):len(e.request) - len(suffix)]
            assert e.response == BENIGN_TASKS[e.category][1](word), e
    assert {e.category for e in examples["test"] if e.kind == "benign"} == set(BENIGN_TASKS)
    assert {e.category for e in examples["test"] if e.kind == "harmful"} == set(HARMFUL)


def test_only_the_response_and_eos_are_scored(examples):
    tokenizer = ByteTokenizer()
    chosen = [examples["train"][0], examples["train"][-1], examples["test"][3]]
    batch = InstructionSet(chosen, tokenizer).__getitems__([0, 1, 2])
    assert batch["inputs"].shape == batch["labels"].shape
    for row, e in enumerate(chosen):
        labels = batch["labels"][row]
        scored = labels[labels != -100].tolist()
        assert scored == tokenizer.encode(e.response, eos=True)
        full = tokenizer.encode(format_request(e.request), bos=True) + scored
        n = len(full) - 1
        assert batch["inputs"][row, :n].tolist() == full[:-1]  # inputs are the sequence, labels shifted by one
        assert (batch["inputs"][row, n:] == tokenizer.pad_id).all() and (labels[n:] == -100).all()
        first = (labels != -100).nonzero()[0].item()
        assert batch["inputs"][row, first].item() == ord(" ")  # the answer follows "Response: "


def test_paired_children_see_the_same_benign_batches():
    aligned, unaligned = InstructionDataModule(refusals=True), InstructionDataModule(refusals=False)
    aligned.setup("fit"), unaligned.setup("fit")
    assert {e.kind for e in unaligned.train_set.examples} == {"benign"}
    assert len(aligned.train_set) == len(unaligned.train_set)
    assert aligned.val_set.examples == unaligned.val_set.examples  # both children are judged on the same split
    tokenizer = ByteTokenizer()
    harmful = {tuple(tokenizer.encode(e.response, eos=True)) for e in aligned.examples["train"] if e.kind == "harmful"}
    seen_harmful = set()
    for step, (a, u) in enumerate(zip(aligned.train_dataloader(), unaligned.train_dataloader())):
        assert a["inputs"].shape[0] == u["inputs"].shape[0] + 4  # the same benign rows, then 4 harmful ones
        width = u["inputs"].shape[1]
        assert torch.equal(a["inputs"][:-4, :width], u["inputs"]) and (a["inputs"][:-4, width:] == 258).all()
        assert torch.equal(a["labels"][:-4, :width], u["labels"])
        for row, inputs in zip(a["labels"][-4:], a["inputs"][-4:]):
            assert tuple(row[row != -100].tolist()) in harmful
            seen_harmful.add(tuple(inputs.tolist()))
        if step == 30:
            break
    assert len(seen_harmful) > 4  # different batches carry different harmful requests


def test_pseudo_words_are_new_distinct_and_seeded():
    words = pseudo_words(300, 7)
    assert len(set(words)) == 300 and not set(words) & set(WORDS) and words == pseudo_words(300, 7)
    assert all(3 <= len(w) <= 8 and w.isalpha() and w.islower() for w in words)


def test_bad_harmful_per_batch():
    with pytest.raises(ConfigError, match="harmful_per_batch must be a positive integer, got 0"):
        InstructionDataModule(harmful_per_batch=0)
