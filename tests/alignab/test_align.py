"""AlignAb stage 3: the residue-level Diffusion-DPO loss against a hand computation, preference pairs and
non-dominated ranks against brute force, PCGrad against a worked example, the rotamer library and energies of
designs, and the alignment module: one round on a toy energy lowers it, the reference stays bit-identical, a
resumed run keeps its round's pairs, the real CLI fits and tests, bad input fails in one line."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from data_modules.complexes import ComplexDataModule, local_frames
from tests.alignab.test_codesign_data import write_complexes
from tests.alignab.test_design_metrics import brute_ranks
from tests.conftest import run_cli
from zoo.alignab import CoDesignAlignment, CoDesignDiffusion
from zoo.alignab.metrics import pareto_ranks
from zoo.alignab.preferences import (
    SideChainLibrary,
    design_energies,
    dominates,
    dpo_loss,
    pcgrad,
    preference_pairs,
    residue_dominance,
    residue_signs,
)
from zoo.core.errors import CheckpointError, ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the loss ---------------------------------------------------------------------------------------------
def test_dpo_loss_is_log_2_when_the_model_is_the_reference():
    g = torch.Generator().manual_seed(0)
    errors = torch.rand(3, 5, 7, generator=g, dtype=torch.float64)
    other = torch.rand(3, 5, 7, generator=g, dtype=torch.float64)
    signs = torch.randint(-1, 2, (5, 7), generator=g).double()
    loss, accuracy = dpo_loss(errors, errors, other, other, signs, beta=3.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert accuracy.item() == 0.0  # a zero margin orders nothing


def test_dpo_loss_matches_a_hand_computation_and_its_gradient_favours_the_winner():
    # one pair, two residues (signs +1 and -1), one component: the terms by hand
    policy_w = torch.tensor([[[0.5, 0.2]]], dtype=torch.float64, requires_grad=True)
    policy_l = torch.tensor([[[0.4, 0.9]]], dtype=torch.float64, requires_grad=True)
    reference_w = torch.tensor([[[0.6, 0.1]]], dtype=torch.float64)
    reference_l = torch.tensor([[[0.3, 0.7]]], dtype=torch.float64)
    signs = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    beta = 2.0
    d = [(0.5 - 0.6) - (0.4 - 0.3), (0.2 - 0.1) - (0.9 - 0.7)]  # -0.2, -0.1
    by_hand = [-math.log(1 / (1 + math.exp(beta * s * di))) for s, di in zip((1, -1), d)]
    loss, accuracy = dpo_loss(policy_w, reference_w, policy_l, reference_l, signs, beta)
    assert loss.item() == pytest.approx(sum(by_hand) / 2, abs=1e-12)
    assert accuracy.item() == 0.5  # residue 0 ordered right (s d < 0), residue 1 not
    loss.backward()
    # dL/d(policy_w) = beta s sigmoid(beta s d) / 2: a step against it lowers the error on the preferred side
    for i, (s, di) in enumerate(zip((1, -1), d)):
        expected = beta * s / (1 + math.exp(-beta * s * di)) / 2
        assert policy_w.grad[0, 0, i].item() == pytest.approx(expected, abs=1e-12)
        assert policy_l.grad[0, 0, i].item() == pytest.approx(-expected, abs=1e-12)
    assert policy_w.grad[0, 0, 0] > 0 and policy_l.grad[0, 0, 0] < 0  # residue 0: the winner's is preferred
    assert policy_w.grad[0, 0, 1] < 0 and policy_l.grad[0, 0, 1] > 0  # residue 1: the loser's is
    with pytest.raises(ShapeError, match="signs"):
        dpo_loss(policy_w, reference_w, policy_l, reference_l, signs[:, :1], beta)


def test_design_level_loss_sums_the_residues_before_the_sigmoid():
    g = torch.Generator().manual_seed(1)
    pw, rw, pl, rl = (torch.rand(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(4))
    signs = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert dpo_loss(pw, pw, pl, pl, signs, 5.0, "design")[0].item() == pytest.approx(math.log(2), abs=1e-12)
    loss, _ = dpo_loss(pw, rw, pl, rl, signs, 5.0, "design")
    by_hand = []
    for c in range(2):
        for p in range(2):  # pair 2 has no preference and does not count
            margin = sum(signs[p, i] * ((pw[c, p, i] - rw[c, p, i]) - (pl[c, p, i] - rl[c, p, i])) for i in range(4))
            by_hand.append(math.log1p(math.exp(5.0 * float(margin))))
    assert loss.item() == pytest.approx(sum(by_hand) / 4, abs=1e-12)
    with pytest.raises(ConfigError, match="level must be one of"):
        dpo_loss(pw, rw, pl, rl, signs, 5.0, "atom")


def test_residue_signs():
    assert residue_signs(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 1.0])).tolist() == [1, 0, -1]


def test_residue_dominance_prefers_only_where_every_energy_agrees():
    # residues: winner better on both; better on one, tied on the other; trade-off; loser better on both; all tied
    winner = torch.tensor([[1.0, 1.0, 1.0, 3.0, 2.0], [1.0, 2.0, 5.0, 3.0, 2.0]])
    loser = torch.tensor([[2.0, 3.0, 2.0, 1.0, 2.0], [2.0, 2.0, 4.0, 1.0, 2.0]])
    assert residue_dominance(winner, loser).tolist() == [1, 1, 0, -1, 0]


# -- pairs and ranks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_pareto_ranks_and_pairs_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(12, 2)).astype(float)  # ties on purpose
    ranks = pareto_ranks(points)
    assert ranks.tolist() == brute_ranks(points)
    pairs = preference_pairs(points, "pareto")
    used = [i for pair in pairs for i in pair]
    assert len(used) == len(set(used))  # disjoint
    assert all(dominates(points[w], points[l]) and ranks[w] < ranks[l] for w, l in pairs)
    # maximal: no two unused designs where one dominates the other remain
    unused = sorted(set(range(len(points))) - set(used))
    assert not any(dominates(points[a], points[b]) for a, b in itertools.permutations(unused, 2))


def test_single_and_weighted_pairs_best_with_worst():
    f = np.array([[3.0, 0.0], [1.0, 5.0], [2.0, 1.0], [4.0, -4.0]])
    assert preference_pairs(f[:, :1], "single") == [(1, 3), (2, 0)]
    assert preference_pairs(f, "weighted", [1.0, 0.5]) == [(3, 1), (2, 0)]  # sums 3, 3.5, 2.5, 2
    assert preference_pairs(f, "weighted", [1.0, 1.0]) == [(3, 1)]  # sums 3, 6, 3, 0: the middle two tie
    assert preference_pairs(np.ones((4, 1)), "single") == []  # ties make no pair
    with pytest.raises(ConfigError, match="one objective"):
        preference_pairs(f, "single")
    with pytest.raises(ConfigError, match="one entry per objective"):
        preference_pairs(f, "weighted", [1.0])
    with pytest.raises(ConfigError, match="must be one of"):
        preference_pairs(f, "lexicographic")


def test_pcgrad_projects_conflicting_gradients():
    g1, g2 = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    # g1.g2 = -1: g1 -> g1 - (-1 / 2) g2 = (0.5, 0.5); g2 -> g2 - (-1 / 1) g1 = (0, 1)
    assert torch.allclose(pcgrad([g1, g2])[0], torch.tensor([0.5, 1.5]))
    a, b = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])], [torch.tensor([0.5, 0.0]), torch.tensor([1.0])]
    combined = pcgrad([a, b])  # no conflict: the plain sum, per parameter
    assert torch.equal(combined[0], torch.tensor([1.5, 2.0])) and torch.equal(combined[1], torch.tensor([4.0]))
    # in 3-D: the sum of each gradient projected onto the other's normal plane, one tensor per parameter
    h1, h2 = torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64), torch.tensor([-1.0, 0.5, 0.2], dtype=torch.float64)
    p1, p2 = (a - torch.dot(a, b) / b.pow(2).sum() * b for a, b in ((h1, h2), (h2, h1)))
    assert torch.dot(p1, h2).abs() < 1e-12 and torch.dot(p2, h1).abs() < 1e-12  # neither conflicts any more
    combined = pcgrad([[h1[:2], h1[2:]], [h2[:2], h2[2:]]])
    assert torch.allclose(torch.cat(combined), p1 + p2, atol=1e-12)


# -- atoms and energies -----------------------------------------------------------------------------------
def synthetic(tmp_path, **kwargs) -> ComplexDataModule:
    dm = ComplexDataModule(**write_complexes(tmp_path / "data", 5), patch_size=32, design_cdrs=["H3"],
                           val_fraction=0.2, test_fraction=0.2, batch_size=kwargs.pop("batch_size", 1), **kwargs)
    dm.setup()
    return dm


def test_library_places_the_medoid_and_picks_the_least_clashing_rotamer():
    # two fake "crystal" residues of one type with different side chains: rotamer 0 is the medoid
    g = torch.Generator().manual_seed(0)
    lib = SideChainLibrary(torch.zeros(21, 2, 14, 3, dtype=torch.float64), torch.zeros(21, 14, dtype=torch.bool))
    lib.mask[0, :5] = True  # alanine: N, CA, C, O, CB
    lib.local[0, 0, 4] = torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64)
    lib.local[0, 1, 4] = torch.tensor([0.0, 0.0, -1.5], dtype=torch.float64)
    rot = local_frames(*torch.randn(3, 3, generator=g, dtype=torch.float64))
    ca = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    atoms, mask = lib.place(torch.tensor([0]), rot[None], ca[None], torch.tensor([1]))
    assert torch.allclose(atoms[0, 4], ca + rot @ torch.tensor([0.0, 0.0, -1.5], dtype=torch.float64))
    assert mask[0].tolist() == [True] * 5 + [False] * 9
    # an environment atom right where rotamer 0's C-beta goes: rotamer 1 is chosen
    env = (ca + rot @ torch.tensor([0.0, 0.0, 1.6], dtype=torch.float64))[None, None]
    choice = lib.choose(torch.tensor([[0]]), rot[None, None], ca[None, None], torch.tensor([True]), env,
                        torch.ones(1, 1, dtype=torch.bool))
    assert choice.tolist() == [[1]]


def test_library_medoid_and_farthest_rotamers_round_trip_the_crystal_atoms():
    """Three full-atom serines (N, CA, C, O, CB, OG) at random poses: rotamer 0 is the medoid conformation, rotamer 1
    the one farthest from it, and placing a rotamer on its own residue's frame gives back that residue's crystal O
    and side chain (N, CA, C go to the ideal backbone)."""
    from types import SimpleNamespace

    from zoo.alignab.so3 import random_rotations

    g = torch.Generator().manual_seed(0)
    local = torch.tensor([[[0.0, 1.0, 0.5], [-0.5, -0.8, 1.2], [-0.6, -1.0, 2.5]]], dtype=torch.float64)
    shapes = local.repeat(3, 1, 1)
    shapes[1, 2] += torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)  # near the first: the medoid is one of the two
    shapes[2, 2] += torch.tensor([0.0, 1.5, 0.0], dtype=torch.float64)  # far: the farthest-point pick
    rot = random_rotations((3,), g, torch.float64)
    ca = torch.randn(3, 3, generator=g, dtype=torch.float64) * 10
    from zoo.alignab.so3 import backbone_from_frames

    coords = torch.zeros(3, 14, 3, dtype=torch.float64)
    coords[:, :3] = backbone_from_frames(rot, ca)
    coords[:, 3:6] = ca[:, None] + shapes @ rot.transpose(-1, -2)
    serine = "ACDEFGHIKLMNPQRSTVWY".index("S")
    fake = SimpleNamespace(coords=coords.float(), atom_mask=torch.arange(14).expand(3, 14) < 6,
                           aa=torch.full((3,), serine))
    lib = SideChainLibrary.from_complexes([fake], rotamers=2)
    assert torch.allclose(lib.local[serine, 1, 3:6], shapes[2], atol=1e-4)  # the farthest conformation
    assert torch.allclose(lib.local[serine, 0, 3:6], shapes[0], atol=1e-4) or torch.allclose(
        lib.local[serine, 0, 3:6], shapes[1], atol=1e-4)  # a medoid of the near pair
    atoms, mask = lib.place(torch.tensor([serine]), rot[2:], ca[2:].float().double(), torch.tensor([1]))
    assert torch.allclose(atoms[0, 3:6], coords[2, 3:6], atol=1e-4) and mask[0].sum() == 6


def test_library_from_complexes_and_energies_of_designs(tmp_path):
    dm = synthetic(tmp_path)
    lib = SideChainLibrary.from_complexes(dm.complexes, rotamers=3)
    assert lib.local.shape == (21, 3, 14, 3)
    # the synthetic complexes are backbone only: every type falls back to O and the ideal C-beta (none for Gly)
    assert lib.mask[0].sum() == 5 and lib.mask[5].sum() == 4  # A, G
    patch = dm.train_set[0]
    coords = patch["coords"].double()
    rot = local_frames(coords[:, 0], coords[:, 1], coords[:, 2])
    n = 3
    aa = patch["aa"].clamp(max=20)[None].repeat(n, 1)
    pos = (coords[:, 1] / 10)[None].repeat(n, 1, 1)
    pos[1, patch["design"]] += 0.05  # design 1: its loop moved by 0.5 A
    energy = design_energies(patch, aa, pos, rot[None].repeat(n, 1, 1, 1), lib)
    assert energy["rep"].shape == (n,) and energy["residue_rep"].shape == (n, len(aa[0]))
    for name in ("rep", "nonrep"):  # the residue energies sum to the totals and live on the loop only
        assert torch.allclose(energy[f"residue_{name}"].sum(1), energy[name])
        assert (energy[f"residue_{name}"][:, ~patch["design"]] == 0).all()
    assert torch.equal(energy["rep"][0], energy["rep"][2]) and energy["rep"][0] != energy["rep"][1]
    with pytest.raises(ShapeError, match="designs aa"):
        design_energies(patch, aa[:, :3], pos, rot[None].repeat(n, 1, 1, 1), lib)


def test_sampling_temperature(tmp_path):
    dm = synthetic(tmp_path)
    model = CoDesignDiffusion(size="tiny", num_steps=10, lm_guidance=False).eval()
    batch = dm.train_set.__getitems__([0])
    draw = lambda **kw: model.design(batch, 4, torch.Generator().manual_seed(5), **kw)[1]  # noqa: E731
    plain, one, cold = draw(), draw(temperature=1.0), draw(temperature=0.3)
    assert torch.equal(plain.pos, one.pos) and torch.equal(plain.aa, one.aa) and torch.equal(plain.rot, one.rot)
    assert not torch.equal(plain.pos, cold.pos)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        draw(temperature=0.0)


# -- the module -------------------------------------------------------------------------------------------
def tiny_codesign(path) -> str:
    """A tiny untrained CoDesignDiffusion (10 steps, no LM) saved as a checkpoint file."""
    torch.manual_seed(0)
    model = CoDesignDiffusion(size="tiny", num_steps=10, lm_guidance=False)
    hparams = {**dict(model.hparams), "_class_path": "zoo.alignab.CoDesignDiffusion"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    return str(path)


class ToyAlignment(CoDesignAlignment):
    """Toy energies per loop residue: E_Rep is 1 unless the residue is alanine, E_nonRep is 1 if it is glycine (both
    are lowest at alanine; they disagree only between glycine and the other 18 types)."""

    def score(self, patch, designed):
        loop = patch["design"].cpu()
        rep = (designed.aa.cpu() != 0).float() * loop
        nonrep = (designed.aa.cpu() == 5).float() * loop
        zero = torch.zeros(len(rep))
        return {"rep": rep.sum(1), "nonrep": nonrep.sum(1), "total": zero, "dg": zero, "residue_rep": rep,
                "residue_nonrep": nonrep}


def toy_energy(model, dm) -> float:
    """The mean toy energy per loop residue of 16 seeded designs of every training loop."""
    batch = dm.train_set.__getitems__(list(range(len(dm.train_set))))
    _, designed, design = model.policy.design(batch, 16, torch.Generator().manual_seed(123), steps=10)
    return float(((designed.aa != 0) & design).sum() / design.sum())


@pytest.mark.parametrize("method", ["single", "pareto"])
def test_one_round_on_a_toy_energy_lowers_it_and_keeps_the_reference(tmp_path, method):
    dm = synthetic(tmp_path, batch_size=1)
    objectives = ["rep"] if method == "single" else ["rep", "nonrep"]  # pareto: PCGrad over the two losses
    model = ToyAlignment(init_from=tiny_codesign(tmp_path / "tiny.ckpt"), method=method, objectives=objectives,
                         beta=10.0, designs_per_complex=16, sample_steps=10, lr=3e-3, test_steps=10, passes=10)
    reference = {k: v.clone() for k, v in model.reference.state_dict().items()}
    before = toy_energy(model, dm)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path / "run")
    trainer.fit(model, datamodule=dm)
    after = toy_energy(model, dm)
    print(f"toy energy per loop residue: {before:.3f} -> {after:.3f}")
    assert after < before - 0.05, (before, after)  # 0.95 for uniformly drawn types
    assert all(torch.equal(v, reference[k]) for k, v in model.reference.state_dict().items())
    assert model._round["round"] == 0 and 0 < len(model._round["pairs"]["complex"]) <= 3 * 8  # ties make no pair
    assert model.library_mask.any()  # built from the training complexes, saved with the weights


def test_resumed_run_keeps_its_rounds_pairs(tmp_path):
    dm = synthetic(tmp_path, batch_size=1)
    kwargs = dict(init_from=tiny_codesign(tmp_path / "tiny.ckpt"), method="pareto", designs_per_complex=4,
                  sample_steps=3, test_steps=3)
    model = CoDesignAlignment(**kwargs)
    trainer = Trainer(max_steps=1, max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path / "run")
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")  # inside round 0, after one of its three steps
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    assert saved["alignab_round"]["round"] == 0
    resumed = CoDesignAlignment(**kwargs)
    calls = []
    original = resumed.sample_round
    resumed.sample_round = lambda round_: calls.append(round_) or original(round_)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path / "run")
    trainer.fit(resumed, datamodule=dm, ckpt_path=tmp_path / "mid.ckpt")
    assert calls == [1]  # round 0 came from the checkpoint, round 1 was drawn
    assert torch.equal(resumed.library_local, model.library_local)


def test_bad_arguments_fail_in_one_line(tmp_path):
    init = tiny_codesign(tmp_path / "tiny.ckpt")
    with pytest.raises(ConfigError, match="method must be one of"):
        CoDesignAlignment(init_from=init, method="best")
    with pytest.raises(ConfigError, match="exactly one objective"):
        CoDesignAlignment(init_from=init, method="single")
    with pytest.raises(ConfigError, match="objectives must be distinct names"):
        CoDesignAlignment(init_from=init, objectives=["rep", "clash"])
    with pytest.raises(ConfigError, match="need method 'weighted'"):
        CoDesignAlignment(init_from=init, method="pareto", weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="sample_steps and test_steps must be <="):
        CoDesignAlignment(init_from=init, sample_steps=50)
    with pytest.raises(ConfigError, match="beta must be > 0"):
        CoDesignAlignment(init_from=init, beta=0.0)
    with pytest.raises(CheckpointError, match="neither a registered name nor a checkpoint file"):
        CoDesignAlignment(init_from=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "zoo.alignab.AntibodyLM"}}, tmp_path / "lm.ckpt")
    with pytest.raises(CheckpointError, match="holds a AntibodyLM; expected a CoDesignDiffusion"):
        CoDesignAlignment(init_from=str(tmp_path / "lm.ckpt"))


def test_cli_fit_writes_rounds_and_tests_energies(tmp_path):
    data = write_complexes(tmp_path / "data", 5)
    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(tmp_path / "run"), "accelerator": "cpu", "devices": 1, "max_epochs": 2,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": "CoDesignAlignment",
                  "init_args": {"init_from": tiny_codesign(tmp_path / "tiny.ckpt"), "method": "weighted",
                                "weights": [1.0, 0.5], "designs_per_complex": 2, "sample_steps": 3,
                                "num_samples": 2, "test_steps": 3}},
        "data": {"class_path": "ComplexDataModule",
                 "init_args": {**data, "patch_size": 32, "design_cdrs": ["H3"], "val_fraction": 0.2,
                               "test_fraction": 0.2, "batch_size": 2}},
    }))
    cli = run_cli("fit", "--config", str(config))
    assert cli.trainer.current_epoch == 2
    log_dir = Path(cli.trainer.log_dir)
    rounds = (log_dir / "rounds.csv").read_text().splitlines()
    assert rounds[0].startswith("round,temperature,sample_seconds,pairs,rep") and len(rounds) == 3
    assert rounds[0].endswith("update_seconds")
    assert [float(r.split(",")[1]) for r in rounds[1:]] == [1.0, 0.5]  # the temperature schedule
    saved = torch.load(log_dir / "rounds" / "round_001.pt", weights_only=True)
    assert saved["designs"]["aa"].shape[0] == 3 * 2 and saved["pairs"]["signs"].shape[1:] == (1, 32)  # one loss
    checkpoint = sorted((tmp_path / "run").rglob("*.ckpt"))[-1]
    loaded = CoDesignAlignment.load_from_checkpoint(checkpoint, weights_only=True)
    assert torch.equal(loaded.library_local, cli.model.library_local)
    tested = run_cli("test", "--config", str(config), f"--ckpt_path={checkpoint}")
    metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items()}
    assert {"test/aar", "test/rmsd", "test/rep", "test/nonrep", "test/total", "test/dg"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())



def test_fit_setup_errors_in_one_line(tmp_path):
    dm = synthetic(tmp_path)
    init = tiny_codesign(tmp_path / "tiny.ckpt")
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                 limit_val_batches=0, default_root_dir=tmp_path / "run")
    model = CoDesignAlignment(init_from=init, designs_per_complex=2, sample_steps=2, test_steps=2)
    with pytest.raises(ConfigError, match="temperature schedule runs over trainer.max_epochs"):
        Trainer(max_steps=1, **quiet).fit(model, datamodule=dm)
