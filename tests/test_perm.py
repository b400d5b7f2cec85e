"""Permutation helpers (e3nn_fast.perm) against e3nn_jax.perm 0.21."""

import itertools
import math
import random

import pytest

from e3nn_fast import perm

e3nn_perm = pytest.importorskip("e3nn_jax.perm")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5])
def test_numbering_matches_e3nn(n):
    for i in range(math.factorial(n)):
        p = perm.from_int(i, n)
        assert p == e3nn_perm.from_int(i, n)
        assert perm.to_int(p) == e3nn_perm.to_int(p) == i
    assert perm.group(n) == e3nn_perm.group(n) == set(itertools.permutations(range(n)))
    assert perm.identity(n) == e3nn_perm.identity(n)


@pytest.mark.parametrize("n", [1, 3, 4, 5])
def test_algebra_matches_e3nn(n):
    g = sorted(perm.group(n))
    for p1 in g:
        assert perm.is_perm(p1) and e3nn_perm.is_perm(p1)
        assert perm.inverse(p1) == e3nn_perm.inverse(p1)
        assert perm.to_cycles(p1) == e3nn_perm.to_cycles(p1)
        assert perm.sign(p1) == e3nn_perm.sign(p1)
        assert perm.compose(p1, perm.inverse(p1)) == perm.identity(n)
        for p2 in g[:: max(1, len(g) // 12)]:
            assert perm.compose(p1, p2) == e3nn_perm.compose(p1, p2)
            # sign is a homomorphism
            assert perm.sign(perm.compose(p1, p2)) == perm.sign(p1) * perm.sign(p2)


def test_sign_counts_transpositions():
    assert perm.sign((1, 0, 2)) == -1
    assert perm.sign((1, 2, 0)) == 1
    assert perm.to_cycles((1, 2, 0, 4, 3)) == {(0, 1, 2), (3, 4)}
    assert perm.to_cycles((0, 1, 2)) == set()


def test_groups_and_germinate_match_e3nn():
    cases = [
        {(1, 0, 2)},
        {(1, 2, 0)},
        {(1, 0, 2, 3), (0, 1, 3, 2)},
        {(1, 2, 3, 0)},
        {(1, 0, 2, 3), (1, 2, 3, 0)},  # generates S4
    ]
    for gens in cases:
        ours = perm.germinate(gens)
        assert ours == e3nn_perm.germinate(gens)
        assert perm.is_group(ours) and e3nn_perm.is_group(ours)
    assert len(perm.germinate({(1, 0, 2, 3), (1, 2, 3, 0)})) == 24
    for subset in [set(), {(1, 0, 2)}, {(0, 1, 2), (1, 2, 0)}, {(0, 1, 2), (1, 0, 2), (1, 2, 0)}]:
        assert perm.is_group(subset) == e3nn_perm.is_group(subset)


def test_rand_is_uniform_and_uses_python_random():
    random.seed(7)
    ours = [perm.rand(4) for _ in range(50)]
    random.seed(7)
    ref = [e3nn_perm.rand(4) for _ in range(50)]
    assert ours == ref
    assert all(perm.is_perm(p) and len(p) == 4 for p in ours)
    assert len(set(ours)) > 10


def test_is_perm_rejects_non_permutations():
    assert not perm.is_perm((0, 0, 1))
    assert not perm.is_perm((1, 2))
    assert perm.is_perm(())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="not a permutation"):
        perm.compose((0, 0), (0, 1))
    with pytest.raises(ValueError, match="different sizes"):
        perm.compose((0, 1), (0, 1, 2))
    with pytest.raises(ValueError, match="not a permutation"):
        perm.inverse((1, 2))
    with pytest.raises(ValueError, match="out of range"):
        perm.from_int(6, 3)
    with pytest.raises(ValueError, match="non-negative"):
        perm.identity(-1)
    with pytest.raises(TypeError, match="int"):
        perm.from_int(1.0, 3)
    with pytest.raises(TypeError):
        perm.to_cycles(3)
    with pytest.raises(ValueError, match="same size"):
        perm.is_group({(0, 1), (0, 1, 2)})
