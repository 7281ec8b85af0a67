"""The antibody masked LM: attention, tied head, metrics, baselines and pseudo-log-likelihood
against slow references; the CLI on a small CSV; the shipped checkpoint beats its baselines."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from data_modules.residues import AminoAcidTokenizer
from tests.alignab.test_antibody_data import antibody_rows, write_csv
from tests.conftest import SHARED_DATA, run_cli
from zoo.alignab.lm import AntibodyEncoder, EncoderBlock
from zoo.alignab.lm_module import LM_SIZES, AntibodyLM, MaskedLMScores
from zoo.core.errors import ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/alignab/lm_oas.yaml"
OAS = SHARED_DATA / "antibody" / "oas_human_heavy_2k.csv"


def random_tokens(batch: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    tokenizer = AminoAcidTokenizer()
    rng = random.Random(seed)
    return tokenizer.batch_encode(["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n)) for n in lengths[:batch]])


def test_attention_matches_a_loop_reference():
    torch.manual_seed(0)
    block = EncoderBlock(dim=8, heads=2).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        q, k, v = block.qkv(x).split(8, dim=-1)
    expected = torch.zeros(2, 5, 8, dtype=torch.float64)
    for b in range(2):
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            for i in range(5):
                scores = [float(q[b, i, cols] @ k[b, j, cols]) / math.sqrt(4) if keep[b, j] else -math.inf for j in range(5)]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                expected[b, i, cols] = sum(w / total * v[b, j, cols] for j, w in enumerate(weights))
    with torch.no_grad():
        torch.testing.assert_close(block.attention(x, keep), block.proj(expected))


def test_padding_does_not_change_the_residues_outputs():
    torch.manual_seed(0)
    encoder = AntibodyEncoder(dim=16, depth=2, heads=2, dropout=0.0).eval()
    tokens = random_tokens(1, [12])
    padded = torch.cat([tokens, torch.zeros(1, 6, dtype=torch.long)], 1)
    torch.testing.assert_close(encoder(padded)[:, :14], encoder(tokens), atol=1e-5, rtol=1e-5)


def test_mlm_head_is_tied_to_the_token_embedding():
    torch.manual_seed(0)
    encoder = AntibodyEncoder(dim=16, depth=1, heads=2, dropout=0.0).eval()
    tokens = random_tokens(2, [7, 9])
    z = encoder.embed(tokens)
    hidden = F.layer_norm(F.gelu(z @ encoder.head_transform.weight.T + encoder.head_transform.bias), (16,),
                          encoder.head_norm.weight, encoder.head_norm.bias)
    torch.testing.assert_close(encoder(tokens), hidden @ encoder.tokens.weight.T + encoder.head_bias)


def test_masked_lm_scores_match_exact_sums():
    torch.manual_seed(0)
    log_probs = torch.randn(30, 25).log_softmax(-1)
    targets = torch.randint(5, 25, (30,))
    metric = MaskedLMScores()
    metric.update(log_probs[:11], targets[:11])
    metric.update(log_probs[11:], targets[11:])
    nll = sum(-float(log_probs[i, targets[i]]) for i in range(30)) / 30
    correct = sum(int(max(range(25), key=lambda c: float(log_probs[i, c])) == int(targets[i])) for i in range(30)) / 30
    result = metric.compute()
    assert result["ppl"].item() == pytest.approx(math.exp(nll), rel=1e-5)
    assert result["acc"].item() == pytest.approx(correct)


def test_baselines_count_training_residues():
    model = AntibodyLM(size="tiny", max_length=10)
    tokenizer = model.tokenizer
    tokens = tokenizer.batch_encode(["ACA", "CCAD", "A"], length=12)
    model.fit_baselines(tokens)
    counts = {a: 1 + sum(s.count(a) for s in ["ACA", "CCAD", "A"]) for a in "ACDEFGHIKLMNPQRSTVWY"}
    for letter, count in counts.items():
        assert model.unigram_counts[tokenizer.index[letter]] == count
    assert model.unigram_counts[: tokenizer.first_residue_id].sum() == 0
    # token index 1 (first residue) saw A, C, A; index 2 saw C, C
    assert model.position_counts[1, tokenizer.index["A"]] == 3 and model.position_counts[1, tokenizer.index["C"]] == 2
    assert model.position_counts[2, tokenizer.index["C"]] == 3 and model.position_counts[2, tokenizer.index["A"]] == 1
    log_probs = model._baseline_log_probs("position", torch.tensor([2]))
    assert log_probs.exp().sum().item() == pytest.approx(1.0)
    assert log_probs[0, tokenizer.index["C"]].exp().item() == pytest.approx(3 / 22)
    assert bool(model.baselines_fitted)


def test_pseudo_log_likelihood_matches_masking_one_position_at_a_time():
    torch.manual_seed(0)
    model = AntibodyLM(size="custom", dim=16, depth=1, heads=2, dropout=0.0, pll_batch_size=7).double()
    sequences = ["ACDEFGHIK", "WYWY", "MNPQRSTVWYAC"]
    tokenizer = model.tokenizer
    expected = []
    for sequence in sequences:
        total = 0.0
        for i in range(len(sequence)):
            tokens = torch.tensor([tokenizer.encode(sequence)])
            truth = int(tokens[0, i + 1])
            tokens[0, i + 1] = tokenizer.mask_id
            with torch.no_grad():
                total += float(model.encoder(tokens)[0, i + 1].log_softmax(-1)[truth])
        expected.append(total)
    model.train()
    summed = model.pseudo_log_likelihood(sequences, per_residue=False)
    assert model.training  # the mode is restored
    torch.testing.assert_close(summed.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    mean = model.pseudo_log_likelihood(sequences)
    torch.testing.assert_close(mean.double(), torch.tensor(expected, dtype=torch.float64) / torch.tensor([9.0, 4, 12]),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", sorted(LM_SIZES))
def test_sizes_give_logits_and_per_residue_embeddings(size):
    model = AntibodyLM(size=size, max_length=20).eval()
    tokens = random_tokens(2, [5, 8])
    assert model(tokens).shape == (2, 10, 25)
    assert model.embed(tokens).shape == (2, 10, LM_SIZES[size]["dim"])


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match="AntibodyLM size must be one of"):
        AntibodyLM(size="huge")
    with pytest.raises(ConfigError, match="dim=30 must be divisible by heads=4"):
        AntibodyLM(size="custom", dim=30, heads=4)
    with pytest.raises(ShapeError, match=r"tokens must have shape \[\*, \*\], got \[5\]"):
        AntibodyLM(size="tiny")(torch.ones(5, dtype=torch.long))


def test_the_config_fits_and_tests_on_a_small_csv(tmp_path):
    write_csv(tmp_path / "oas_human_heavy_2k.csv", antibody_rows(40))
    cli = run_cli("fit", "--config", CONFIG, f"--data.data_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")
    assert cli.trainer.global_step == 1 and bool(cli.model.baselines_fitted)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    expected = {f"test/{p}{m}{r}" for p in ("", "unigram/", "position/") for m in ("acc", "ppl") for r in ("", "_h3")}
    assert expected <= set(results) and all(math.isfinite(v) for v in results.values())
    assert 1.0 <= results["test/unigram/ppl"] <= 20.0  # a smoothed distribution over 20 residues


@pytest.mark.skipif(not OAS.is_file(), reason=f"real OAS data not found at {OAS}")
def test_shipped_lm_beats_the_baselines_and_prefers_native_sequences():
    import zoo
    from data_modules.antibody import AntibodySequenceDataModule

    model = zoo.load_pretrained("alignab-lm-oas")
    data = AntibodySequenceDataModule(data_dir=str(OAS.parent))  # the config's split and seed
    data.setup()
    metrics = {"lm": MaskedLMScores(), "unigram": MaskedLMScores()}
    with torch.no_grad():
        for start in range(0, len(data.test_set), 50):
            batch = data.test_set.__getitems__(list(range(start, min(start + 50, len(data.test_set)))))
            targets = batch["labels"] != -100
            truth = batch["labels"][targets]
            metrics["lm"].update(model(batch["inputs"])[targets].log_softmax(-1), truth)
            metrics["unigram"].update(model._baseline_log_probs("unigram", targets.nonzero()[:, 1]), truth)
    lm, unigram = metrics["lm"].compute(), metrics["unigram"].compute()
    assert lm["acc"] > unigram["acc"] + 0.1 and lm["ppl"] < unigram["ppl"]
    natives = data.split_sequences("test")[:20]
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in natives]
    pll = model.pseudo_log_likelihood(natives + shuffled)
    assert (pll[:20] > pll[20:]).float().mean() >= 0.9
