"""The shipped AlignAb stage-3 checkpoint ``alignab-align-pareto`` (``configs/alignab/align_pareto.yaml``, registered by
``python -m zoo register``): a stripped, weights-only file; its frozen reference is bit for bit the network of the
model it aligned (``alignab-codesign-h3``), its policy moved away from it, it carries the rotamer library it was
trained with, and the aligned policy designs loops on small synthetic complexes. Skipped only when the checkpoint
is not in the manifest."""

from __future__ import annotations

import pytest
import torch

from tests.alignab.test_codesign_model import synthetic_batch
from zoo.core.registry import checkpoint_dir, read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "alignab-align-pareto"
SHIPPED = read_manifest().get(NAME)


@pytest.mark.skipif(SHIPPED is None, reason=f"{NAME} is not in checkpoints/manifest.json")
def test_shipped_alignment_keeps_its_reference_and_designs_loops(tmp_path):
    import zoo
    from zoo.alignab import CoDesignAlignment

    path = checkpoint_dir() / SHIPPED["file"]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) <= {"state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version"}
    model = zoo.load_pretrained(NAME)
    assert isinstance(model, CoDesignAlignment) and not model.training
    assert model.hparams.method == "pareto" and model.hparams.init_from == "alignab-codesign-h3"
    start = zoo.load_pretrained("alignab-codesign-h3").network.state_dict()
    reference, policy = model.reference.state_dict(), model.policy.network.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in start.items())  # frozen through every round
    assert any(not torch.equal(policy[k], v) for k, v in start.items())  # and the policy was aligned
    assert model.library_mask.any() and model.library_mask[:20, 4].sum() == 19  # every type but Gly has a C-beta

    _, batch = synthetic_batch(tmp_path)
    native, designed, design = model.policy.design(batch, 2, torch.Generator().manual_seed(0), steps=20)
    loop_types = designed.aa[design]
    assert ((loop_types >= 0) & (loop_types < 20)).all() and torch.isfinite(designed.pos[design]).all()
    keep = ~design
    assert torch.equal(designed.pos[keep], native.pos[keep]) and torch.equal(designed.aa[keep], native.aa[keep])
