"""The co-design network and LightningModule of AlignAb stage 2: SE(3) equivariance of the IPA network in
fp64, the LM switch, seeded sampling, and the module through the real CLI on small synthetic complexes (fit,
weights-only checkpoint round trip, test metrics, predict writing PDB + FASTA + energies)."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml

from data_modules.complexes import CDR_NAMES, ComplexDataModule, read_pdb_complex
from tests.alignab.test_codesign_data import write_complexes
from tests.conftest import run_cli
from zoo.alignab import CODESIGN_SIZES, CoDesignDiffusion, CoDesignNetwork
from zoo.alignab.so3 import random_rotations
from zoo.core.errors import ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")


def random_inputs(b: int = 2, n: int = 12, lm_dim: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    state = dict(aa=torch.randint(0, 21, (b, n), generator=g), rot=random_rotations((b, n), g, torch.float64),
                 pos=torch.randn(b, n, 3, generator=g, dtype=torch.float64), t=torch.randint(1, 101, (b,), generator=g))
    mask = torch.ones(b, n, dtype=torch.bool)
    if b > 1:
        mask[1, -3:] = False
    cond = dict(role=torch.randint(0, 3, (b, n), generator=g), cdr=torch.randint(0, 7, (b, n), generator=g),
                design=torch.rand(b, n, generator=g) < 0.4, epitope=torch.rand(b, n, generator=g) < 0.2,
                chain=torch.randint(0, 2, (b, n), generator=g), resseq=torch.randint(0, 150, (b, n), generator=g),
                mask=mask, lm=torch.randn(b, n, lm_dim, generator=g, dtype=torch.float64) if lm_dim else None)
    return state, cond


@pytest.mark.parametrize("lm_dim", [0, 8])
def test_network_is_se3_equivariant_in_fp64(lm_dim):
    torch.manual_seed(0)
    net = CoDesignNetwork(dim=32, pair_dim=16, depth=2, heads=4, lm_dim=lm_dim).double().eval()
    for head in (net.eps_head, net.rot_head):  # zero-initialised: give them weights so the test can see them
        torch.nn.init.normal_(head[-1].weight, std=0.3)
    state, cond = random_inputs(lm_dim=lm_dim)
    g = torch.Generator().manual_seed(1)
    turn = random_rotations((), g, torch.float64)
    shift = torch.randn(3, generator=g, dtype=torch.float64)
    eps, rot0, logits = net(state["aa"], state["rot"], state["pos"], state["t"], **cond)
    moved = net(state["aa"], turn @ state["rot"], state["pos"] @ turn.T + shift, state["t"], **cond)
    keep = cond["mask"]
    assert torch.allclose(moved[0][keep], (eps @ turn.T)[keep], atol=1e-10)  # noise rotates, ignores the shift
    assert torch.allclose(moved[1][keep], (turn @ rot0)[keep], atol=1e-10)  # R0^ rotates
    assert torch.allclose(moved[2][keep], logits[keep], atol=1e-10)  # types are invariant
    assert eps.abs().max() > 1e-3 and (rot0 - state["rot"]).abs().max() > 1e-3
    # the predicted loop C-alpha x0^ = (x_t - sqrt(1 - abar) eps^) / sqrt(abar) moves with the input, with the
    # translation scaled by 1 / sqrt(abar) (the Gaussian diffusion is centred on the anchors)
    abar = 0.3
    x0 = (state["pos"] - (1 - abar) ** 0.5 * eps) / abar**0.5
    x0_moved = (state["pos"] @ turn.T + shift - (1 - abar) ** 0.5 * moved[0]) / abar**0.5
    assert torch.allclose(x0_moved[keep], (x0 @ turn.T + shift / abar**0.5)[keep], atol=1e-10)


def test_padding_does_not_change_real_residues():
    torch.manual_seed(0)
    net = CoDesignNetwork(dim=32, pair_dim=16, depth=2).double().eval()
    state, cond = random_inputs(b=1, n=10)
    out = net(state["aa"], state["rot"], state["pos"], state["t"], **cond)
    padded_state = {k: torch.cat([v, v[:, :3]], 1) if k != "t" else v for k, v in state.items()}
    padded = {k: (torch.cat([v, v[:, :3]], 1) if v is not None else None) for k, v in cond.items()}
    padded["mask"][:, 10:] = False
    padded_out = net(padded_state["aa"], padded_state["rot"], padded_state["pos"], padded_state["t"], **padded)
    for a, b in zip(out, padded_out):
        assert torch.allclose(a, b[:, :10], atol=1e-10)


def tiny_module(**kwargs) -> CoDesignDiffusion:
    return CoDesignDiffusion(size="tiny", num_steps=10, **kwargs)


def synthetic_batch(tmp_path, split: str = "test"):
    dm = ComplexDataModule(**write_complexes(tmp_path, 5), patch_size=32, design_cdrs=list(CDR_NAMES),
                           val_fraction=0.2, test_fraction=0.2, batch_size=2)
    dm.setup()
    return dm, next(iter(getattr(dm, f"{split}_dataloader")()))


def test_lm_switch_and_sizes(tmp_path):
    _, batch = synthetic_batch(tmp_path, "train")
    with_lm, without = tiny_module(lm_guidance=True), tiny_module(lm_guidance=False)
    assert without.lm is None and not any(k.startswith("lm.") for k in without.state_dict())
    assert with_lm.lm is not None and not any(p.requires_grad for p in with_lm.lm.parameters())
    emb = with_lm.lm_embeddings(batch)
    assert emb.shape == (*batch["aa"].shape, 64)
    assert (emb[batch["lm_index"] < 0] == 0).all() and emb[batch["lm_index"] >= 0].abs().sum() > 0
    # the LM's embeddings reach the prediction
    state0, design, cond = with_lm.inputs(batch)
    t = torch.full((len(design),), 5)
    out = with_lm.network_fn(cond)(state0, t)[2]
    out_zero = with_lm.network_fn({**cond, "lm": torch.zeros_like(cond["lm"])})(state0, t)[2]
    assert not torch.allclose(out, out_zero)
    losses = with_lm(batch, generator=torch.Generator().manual_seed(0), augment=True)
    assert set(losses) == {"pos", "rot", "seq", "seq_ce"} and all(torch.isfinite(v) for v in losses.values())
    for size in CODESIGN_SIZES:
        assert CoDesignDiffusion(size=size, lm_guidance=False).network.blocks[0].attention.heads > 0
    with pytest.raises(ConfigError, match="size must be one of"):
        CoDesignDiffusion(size="huge")
    with pytest.raises(ShapeError, match="design mode"):
        without.inputs({"aa": batch["aa"]})


def test_seeded_sampling_is_reproducible_and_keeps_the_context(tmp_path):
    _, batch = synthetic_batch(tmp_path)
    model = tiny_module(lm_guidance=True).eval()
    native, a, design = model.design(batch, 2, torch.Generator().manual_seed(3))
    _, b, _ = model.design(batch, 2, torch.Generator().manual_seed(3))
    _, c, _ = model.design(batch, 2, torch.Generator().manual_seed(4))
    assert torch.equal(a.aa, b.aa) and torch.equal(a.pos, b.pos) and torch.equal(a.rot, b.rot)
    assert not torch.equal(a.pos, c.pos)
    keep = ~design
    assert torch.equal(a.pos[keep], native.pos[keep]) and torch.equal(a.aa[keep], native.aa[keep])
    assert torch.equal(a.rot[keep], native.rot[keep])
    too_long = tiny_module(lm_guidance=False, max_loop_length=5)
    with pytest.raises(ShapeError, match="longer than max_loop_length=5"):
        too_long.design(batch, 1)


def codesign_config(tmp_path, **model) -> str:
    data = write_complexes(tmp_path / "data", 5)
    config = tmp_path / "codesign.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(tmp_path / "run"), "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False},
        "model": {"class_path": "CoDesignDiffusion",
                  "init_args": {"size": "tiny", "num_steps": 5, "num_samples": 2, "num_designs": 2, **model}},
        "data": {"class_path": "ComplexDataModule",
                 "init_args": {**data, "patch_size": 32, "design_cdrs": list(CDR_NAMES), "val_fraction": 0.2,
                               "test_fraction": 0.2, "batch_size": 4}},
    }))
    return str(config)


def test_cli_fit_checkpoint_test_and_predict(tmp_path, capsys):
    config = codesign_config(tmp_path, pack_side_chains=False)
    cli = run_cli("fit", "--config", config, "--trainer.max_steps=3", "--trainer.max_epochs=1",
                  "--trainer.limit_val_batches=1")
    assert cli.trainer.global_step == 3
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    loaded = CoDesignDiffusion.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    trained = cli.model.state_dict()
    assert set(loaded.state_dict()) == set(trained)
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())

    tested = run_cli("test", "--config", config, f"--ckpt_path={path}")
    metrics = {k: float(v) for k, v in tested.trainer.callback_metrics.items()}
    assert {"test/aar", "test/rmsd", "test/aar_random", "test/aar_lm", "test/loss"} <= set(metrics)
    assert 0 <= metrics["test/aar"] <= 1 and metrics["test/rmsd"] > 0

    run_cli("predict", "--config", config, f"--ckpt_path={path}")
    folder = tmp_path / "run" / "designs"
    pdbs = sorted(folder.glob("SYN*_H3_*.pdb"))
    assert len(pdbs) == 2  # one held-out complex, two designs
    records = list(csv.DictReader(open(folder / "designs.csv")))
    assert len(records) == 2 and {"aar", "rmsd", "cdr_ag_rep", "cdr_ag_nonrep", "cdr_total", "dg"} <= set(records[0])
    fasta = (folder / "designs.fasta").read_text().splitlines()
    assert fasta[0].startswith(">SYN") and fasta[1] == records[0]["sequence"] and len(fasta[1]) == 13
    datamodule = ComplexDataModule(**{k: v for k, v in yaml.safe_load(open(config))["data"]["init_args"].items()})
    datamodule.setup()
    complex_ = next(c for c in datamodule.complexes if c.name == records[0]["complex"])
    design = read_pdb_complex(pdbs[0], complex_)
    loop = complex_.cdr == 3
    assert design.sequence(loop) == records[0]["sequence"]
    # the rest of the complex is unchanged (to PDB precision); the loop has its four backbone atoms
    assert torch.allclose(design.coords[~loop][complex_.atom_mask[~loop]], complex_.coords[~loop][
        complex_.atom_mask[~loop]], atol=1e-3)
    assert design.atom_mask[loop][:, :4].all()
    bond = (design.coords[loop][:, 1] - design.coords[loop][:, 0]).norm(dim=-1)
    assert torch.allclose(bond, torch.full_like(bond, 1.458), atol=2e-3)
    # a loop longer than the model's maximum: one line naming the complex, the other designs are kept
    capsys.readouterr()
    run_cli("predict", "--config", config, f"--ckpt_path={path}", "--model.max_loop_length=12")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert lines == [f"skipped {records[0]['complex']} CDR-H3: loop of 13 residues is longer than max_loop_length=12"]


def test_faspr_packs_only_the_designed_side_chains(tmp_path):
    pytest.importorskip("pyfaspr", reason="FASPR side chains need the optional pyfaspr package")
    from data_modules.complexes import load_complex, read_cases, write_pdb
    from data_modules.residues import ATOM14

    write_complexes(tmp_path, 1)
    complex_ = load_complex(tmp_path / "complexes", read_cases(tmp_path / "cases.tsv")[0])
    loop = torch.nonzero(complex_.cdr == 3).flatten()
    sequence = list(complex_.sequence())
    for i in loop.tolist():
        sequence[i] = "Y"
    path = write_pdb(complex_, tmp_path / "design.pdb", "".join(sequence))
    assert CoDesignDiffusion.pack(path, complex_, loop)
    packed = read_pdb_complex(path, complex_)
    assert packed.sequence(complex_.cdr == 3) == "Y" * len(loop)
    assert packed.atom_mask[loop].sum(-1).tolist() == [len(ATOM14["Y"])] * len(loop)
    rest = torch.ones(len(complex_), dtype=torch.bool)
    rest[loop] = False
    assert torch.equal(packed.atom_mask[rest], complex_.atom_mask[rest])
    assert torch.allclose(packed.coords[rest][complex_.atom_mask[rest]], complex_.coords[rest][complex_.atom_mask[rest]],
                          atol=1e-3)
    ring = packed.coords[loop][:, 5:11]  # Tyr CG..CZ: a planar ring 1.39 A apart
    assert torch.allclose((ring[:, 0] - ring[:, 1]).norm(dim=-1), torch.full((len(loop),), 1.39), atol=0.05)
