"""The shipped AlignAb stage-2 checkpoint ``alignab-codesign-h3`` (``configs/alignab/codesign_cdrs_long.yaml``,
registered by ``python -m zoo register``): it is a stripped, weights-only file whose weights ``load_pretrained``
puts into the model, and the loaded model designs a CDR loop on small synthetic complexes (real trastuzumab
VH/VL sequences on a made-up backbone), leaving the rest of the patch untouched. Skipped only when the
checkpoint is not in the manifest."""

from __future__ import annotations

import pytest
import torch

from tests.alignab.test_codesign_model import synthetic_batch
from zoo.core.registry import checkpoint_dir, read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "alignab-codesign-h3"
SHIPPED = read_manifest().get(NAME)


@pytest.mark.skipif(SHIPPED is None, reason=f"{NAME} is not in checkpoints/manifest.json")
def test_shipped_codesign_checkpoint_loads_weights_only_and_designs_a_loop(tmp_path):
    import zoo
    from zoo.alignab import CoDesignDiffusion

    path = checkpoint_dir() / SHIPPED["file"]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert set(checkpoint) <= {"state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version"}
    assert "optimizer_states" not in checkpoint and SHIPPED["class"] == "CoDesignDiffusion"

    model = zoo.load_pretrained(NAME)
    assert isinstance(model, CoDesignDiffusion) and not model.training
    assert model.hparams.lm_guidance and model.lm is not None  # the LM-guided model, the LM inside
    loaded = model.state_dict()
    assert set(loaded) == set(checkpoint["state_dict"])
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint["state_dict"].items())
    assert sum(p.numel() for p in model.parameters()) == SHIPPED["params"]

    # the same file through Lightning's own weights-only loader
    again = CoDesignDiffusion.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in checkpoint["state_dict"].items())

    _, batch = synthetic_batch(tmp_path)
    native, designed, design = model.design(batch, 2, torch.Generator().manual_seed(0), steps=20)
    assert design.any(-1).all()  # every patch has a loop to design
    loop_types = designed.aa[design]
    assert ((loop_types >= 0) & (loop_types < 20)).all()  # one of the 20 amino acids, never mask/padding
    assert torch.isfinite(designed.pos[design]).all() and torch.isfinite(designed.rot[design]).all()
    keep = ~design
    assert torch.equal(designed.aa[keep], native.aa[keep]) and torch.equal(designed.pos[keep], native.pos[keep])
    assert torch.equal(designed.rot[keep], native.rot[keep])
    scores = model.evaluate(native, designed, design, {k: v.repeat_interleave(2, 0) for k, v in batch.items()})
    assert ((scores["aar"] >= 0) & (scores["aar"] <= 1)).all() and torch.isfinite(scores["rmsd"]).all()
    # loops stay near their anchors (the x0 clip: 30 A from the anchor centre; positions are in nm)
    assert (designed.pos[design].norm(dim=-1) * 10).max() < 60
