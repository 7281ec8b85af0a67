"""Design metrics against slow, obviously-correct references: recovery by counting, Kabsch RMSD
against Biopython's SVDSuperimposer, Pareto ranks by O(n^2) peeling, hypervolume by
inclusion-exclusion over all subsets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from Bio.SVDSuperimposer import SVDSuperimposer

from zoo.alignab.metrics import framework_rmsd, hypervolume, kabsch, nondominated_fronts, pareto_ranks, recovery
from zoo.core.errors import ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recovery_counts_matches():
    assert recovery("ARDYW", "ARDFW").item() == pytest.approx(4 / 5)
    designed = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    native = torch.tensor([0, 1, 2, 0])
    mask = torch.tensor([True, True, False, True])
    expected = [sum(int(d[i] == native[i]) for i in range(4) if mask[i]) / 3 for d in designed.tolist()]
    assert recovery(designed, native, mask).tolist() == pytest.approx(expected)
    with pytest.raises(ShapeError, match="length"):
        recovery("ARD", "AR")


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def test_kabsch_recovers_a_rigid_motion():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    rotation = random_rotation(generator)
    y = x @ rotation.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    found, shift = kabsch(x, y)
    assert torch.allclose(found, rotation, atol=1e-10)
    assert torch.allclose(x @ found.T + shift, y, atol=1e-10)
    assert torch.linalg.det(found).item() == pytest.approx(1.0)


def test_kabsch_never_reflects():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    mirrored = x * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    rotation, _ = kabsch(x, mirrored)
    assert torch.linalg.det(rotation).item() == pytest.approx(1.0)


def test_framework_rmsd_matches_biopython_superimposer():
    generator = torch.Generator().manual_seed(2)
    n = 30
    native = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 5
    fit = torch.zeros(n, dtype=torch.bool)
    fit[:20] = True
    cdr = ~fit
    designs = []
    for _ in range(3):
        moved = native @ random_rotation(generator).T + torch.randn(3, generator=generator, dtype=torch.float64) * 4
        designs.append(moved + torch.randn(n, 3, generator=generator, dtype=torch.float64) * 0.5)
    designs = torch.stack(designs)
    ours = framework_rmsd(designs, native, fit, cdr)
    for b in range(3):
        sup = SVDSuperimposer()
        sup.set(native[fit].numpy(), designs[b][fit].numpy())  # (reference, coords to move)
        sup.run()
        rot, tran = sup.get_rotran()  # Biopython applies x @ rot + tran
        moved = designs[b].numpy() @ rot + tran
        expected = np.sqrt(((moved[cdr.numpy()] - native[cdr].numpy()) ** 2).sum(-1).mean())
        assert ours[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_framework_rmsd_zero_for_rigid_copy():
    generator = torch.Generator().manual_seed(3)
    native = torch.randn(15, 3, generator=generator, dtype=torch.float64)
    copy = native @ random_rotation(generator).T + 7.0
    fit = torch.arange(15) < 10
    assert framework_rmsd(copy, native, fit, ~fit).item() == pytest.approx(0.0, abs=1e-9)


def brute_ranks(points: np.ndarray) -> list[int]:
    """Peel fronts with an O(n^2) dominance check per round (minimisation)."""
    dominates = lambda a, b: bool(np.all(a <= b) and np.any(a < b))  # noqa: E731
    left, ranks, rank = set(range(len(points))), [0] * len(points), 0
    while left:
        front = [i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)]
        for i in front:
            ranks[i] = rank
        left -= set(front)
        rank += 1
    return ranks


@pytest.mark.parametrize("objectives", [2, 3])
def test_pareto_ranks_match_brute_force(objectives):
    rng = np.random.default_rng(objectives)
    points = rng.integers(0, 6, size=(40, objectives)).astype(float)  # small integers: ties and duplicates
    assert pareto_ranks(points).tolist() == brute_ranks(points)
    fronts = nondominated_fronts(torch.tensor(points))
    assert sorted(np.concatenate(fronts).tolist()) == list(range(40))
    assert all(set(brute_ranks(points)[i] for i in front) == {k} for k, front in enumerate(fronts))


def test_pareto_ranks_maximise_flips_the_order():
    points = np.array([[1.0, 1.0], [2.0, 2.0]])
    assert pareto_ranks(points).tolist() == [0, 1]
    assert pareto_ranks(points, maximise=True).tolist() == [1, 0]


def brute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Volume of the union of boxes [p, reference] by inclusion-exclusion over all non-empty subsets."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), size):
            corner = points[list(subset)].max(0)
            total += (-1) ** (size + 1) * np.prod(np.clip(reference - corner, 0, None))
    return total


@pytest.mark.parametrize("objectives", [2, 3])
def test_hypervolume_matches_inclusion_exclusion(objectives):
    rng = np.random.default_rng(10 + objectives)
    for _ in range(5):
        points = rng.uniform(0, 1, size=(9, objectives))
        reference = np.full(objectives, 0.9)  # some points lie beyond the reference in some objective
        assert hypervolume(points, reference) == pytest.approx(brute_hypervolume(points, reference), rel=1e-12, abs=1e-12)


def test_hypervolume_simple_boxes():
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [3.0, 3.0]) == pytest.approx(3.0)
    assert hypervolume(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(6.0)
    assert hypervolume([[5.0, 5.0]], [3.0, 3.0]) == 0.0
    with pytest.raises(ShapeError, match="reference"):
        hypervolume([[1.0, 2.0]], [3.0])
