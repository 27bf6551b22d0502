"""Invariants of the tree layout, the level sweep and routing over many random trees.

Each jitted routine is compared with a plain recursive Python version written from its definition."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import h2mt_jax
from h2mt_jax.hierarchy.build import Node, number_nodes, contiguous_groups
from h2mt_jax.hierarchy.index import append_leaves
from h2mt_jax.hierarchy.memory import sweep_memories
from h2mt_jax.hierarchy.route import beam_route, flat_route
from h2mt_jax.hierarchy.tree import pad_tree, padded_ids

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LEAF_LEN = 6


def _shape(fanout):
    """A nested list shape: an int is a leaf, a list an internal node of 1..fanout children."""
    return st.recursive(st.just(0), lambda kids: st.lists(kids, min_size=1, max_size=fanout),
                        max_leaves=40)


@st.composite
def specs(draw, max_fanout=5):
    fanout = draw(st.integers(2, max_fanout))
    shape = draw(_shape(fanout))
    if not isinstance(shape, list):
        shape = [shape]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    leaves = []

    def make(s):
        if isinstance(s, list):
            return Node(children=[make(c) for c in s])
        n = Node(leaf=(rng.integers(3, 200, size=int(rng.integers(1, LEAF_LEN + 1))).tolist(),
                        (len(leaves), len(leaves) + 1)))
        leaves.append(n)
        return n

    root = make(shape)
    spec = number_nodes(root, leaves)
    spec.validate(fanout)
    return spec, fanout


def _jit_sweep(kind, spec, fanout, leaf_mem, params, model=None, **pad):
    tree = pad_tree(spec, fanout, LEAF_LEN, **pad)
    mem = np.zeros((tree.num_nodes,) + leaf_mem.shape[1:], np.float32)
    mem[:spec.n_leaves] = leaf_mem
    out = jax.jit(functools.partial(sweep_memories, model, params, kind))(tree, jnp.asarray(mem))
    return tree, np.asarray(out)[padded_ids(spec, tree)]


def _reference_parent(kind, kids, params, model=None):
    """A parent's memory from its children's `[c, m, d]`, written from the definitions and not
    with the library's `aggregate`: the mean of the children; attention: each of the `m` query
    rows takes a softmax(q . x / sqrt(d))-weighted sum over all `c * m` child vectors; backbone:
    the final hidden states at `m` write tokens placed after the children's vectors, from one
    plain causal forward of the backbone."""
    c, m, d = kids.shape
    flat = kids.reshape(c * m, d).astype(np.float64)
    if kind == "mean":
        return flat.reshape(c, m, d).mean(0)
    if kind == "attention":
        q = np.asarray(params["agg_query"], np.float64)  # [m, d]
        s = q @ flat.T / np.sqrt(d)
        p = np.exp(s - s.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)) @ flat
    write = np.asarray(params["agg_write"], np.float32)
    x = np.concatenate([kids.reshape(c * m, d).astype(np.float32), write])[None]
    return np.asarray(model(jnp.asarray(x))[0])[0, c * m:]


def _recursive(kind, spec, leaf_mem, params, model=None):
    """Post-order recursion, one node at a time, with the independent `_reference_parent`."""
    out = {}

    def visit(n):
        if n < spec.n_leaves:
            return leaf_mem[n]
        kids = np.stack([visit(c) for c in spec.children[n]])  # [c, m, d]
        out[n] = _reference_parent(kind, kids, params, model).astype(np.float32)
        return out[n]

    visit(spec.root)
    return np.stack([leaf_mem[i] if i < spec.n_leaves else out[i] for i in range(spec.n_nodes)])


PARAMS = {"agg_query": jnp.asarray(np.random.default_rng(0).standard_normal((2, 8)), jnp.float32)}


@SETTINGS
@given(specs())
def test_parents_after_children_and_levels(spec_fanout):
    spec, fanout = spec_fanout
    tree = pad_tree(spec, fanout, LEAF_LEN)
    h, ch = np.asarray(tree.height), np.asarray(tree.children)
    levels = np.asarray(tree.level_nodes)
    seen = [int(x) for x in levels.reshape(-1) if x >= 0]
    internal = [int(i) for i in np.flatnonzero(h >= 1)]
    assert sorted(seen) == internal  # every internal node is swept exactly once
    for row, nodes in enumerate(levels):  # row r holds height r + 1, after all lower rows
        for n in nodes[nodes >= 0]:
            assert h[n] == row + 1
            kids = ch[n][ch[n] >= 0]
            assert len(kids) and (h[kids] < h[n]).all()
            assert (np.asarray(tree.parent)[kids] == n).all()
    assert int(tree.root) == padded_ids(spec, tree)[spec.root]


@SETTINGS
@given(specs(), st.sampled_from(["mean", "attention"]))
def test_sweep_equals_recursive_post_order(spec_fanout, kind):
    spec, fanout = spec_fanout
    leaf_mem = np.random.default_rng(1).standard_normal((spec.n_leaves, 2, 8)).astype(np.float32)
    _, got = _jit_sweep(kind, spec, fanout, leaf_mem, PARAMS)
    np.testing.assert_allclose(got, _recursive(kind, spec, leaf_mem, PARAMS), atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    lm = h2mt_jax.random_lm(seed=2, num_layers=1, hidden_size=32, intermediate_size=64,
                            num_heads=2, num_kv_heads=1, head_dim=16)
    params = {"agg_write": jnp.asarray(np.random.default_rng(3).standard_normal((2, 32)) * 0.1,
                                       jnp.float32)}
    return lm, params


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(specs(max_fanout=3))
def test_backbone_sweep_equals_recursive(tiny, spec_fanout):
    lm, params = tiny
    spec, fanout = spec_fanout
    leaf_mem = np.random.default_rng(4).standard_normal((spec.n_leaves, 2, 32)).astype(np.float32)
    _, got = _jit_sweep("backbone", spec, fanout, leaf_mem, params, lm.model)
    want = _recursive("backbone", spec, leaf_mem, params, lm.model)
    np.testing.assert_allclose(got, want, atol=1e-4)


@SETTINGS
@given(specs(), st.sampled_from(["mean", "attention"]))
def test_padding_never_changes_a_result(spec_fanout, kind):
    spec, fanout = spec_fanout
    leaf_mem = np.random.default_rng(5).standard_normal((spec.n_leaves, 2, 8)).astype(np.float32)
    _, small = _jit_sweep(kind, spec, fanout, leaf_mem, PARAMS)
    big_tree, big = _jit_sweep(kind, spec, fanout, leaf_mem, PARAMS, min_leaves=64,
                               min_nodes=200, min_height=8, min_width=64)
    np.testing.assert_allclose(big, small, atol=1e-6)
    scores = np.random.default_rng(6).standard_normal(spec.n_nodes).astype(np.float32)
    routes = []
    for pad in ({}, dict(min_leaves=64, min_nodes=200, min_height=8, min_width=64)):
        tree = pad_tree(spec, fanout, LEAF_LEN, **pad)
        full = np.full(tree.num_nodes, -np.inf, np.float32)
        full[padded_ids(spec, tree)] = scores
        r = beam_route(tree, jnp.asarray(full), 2)
        routes.append([int(i) for i in r.leaves])
    assert routes[0] == routes[1]  # leaves keep their ids whatever the padding


def _python_beam(spec, scores, k):
    """The beam rule on the unpadded tree, written out with Python lists."""
    frontier = list(spec.children[spec.root])
    for _ in range(max(spec.heights())):
        kept = sorted(frontier, key=lambda n: -scores[n])[:k]
        frontier = []
        for n in kept:
            frontier += [n] if n < spec.n_leaves else list(spec.children[n])
    return sorted(frontier, key=lambda n: -scores[n])[:k]


@SETTINGS
@given(specs(), st.integers(1, 6), st.integers(0, 2 ** 31))
def test_beam_route_equals_python_and_flat_equals_ranking(spec_fanout, k, seed):
    spec, fanout = spec_fanout
    tree = pad_tree(spec, fanout, LEAF_LEN)
    scores = np.random.default_rng(seed).standard_normal(spec.n_nodes).astype(np.float32)
    full = np.full(tree.num_nodes, -np.inf, np.float32)
    full[padded_ids(spec, tree)] = scores
    k = min(k, spec.n_leaves)
    beam = [int(i) for i in beam_route(tree, jnp.asarray(full), k).leaves if i >= 0]
    assert beam == _python_beam(spec, scores, k)
    flat = [int(i) for i in flat_route(tree, jnp.asarray(full), k).leaves]
    assert flat == list(np.argsort(-scores[:spec.n_leaves], kind="stable")[:k])


@SETTINGS
@given(specs(), st.integers(0, 2 ** 31))
def test_unpruned_beam_equals_brute_force(spec_fanout, seed):
    # With k at least the widest level (so at least the fan-out), nothing is ever pruned:
    # the beam returns the same leaves as ranking all leaves by brute force.
    spec, fanout = spec_fanout
    tree = pad_tree(spec, fanout, LEAF_LEN)
    scores = np.random.default_rng(seed).standard_normal(spec.n_nodes).astype(np.float32)
    full = np.full(tree.num_nodes, -np.inf, np.float32)
    full[padded_ids(spec, tree)] = scores
    k = max(fanout, spec.n_leaves)
    beam = sorted(int(i) for i in beam_route(tree, jnp.asarray(full), k).leaves if i >= 0)
    assert beam == list(range(spec.n_leaves))
    top = min(fanout, spec.n_leaves)
    ranked = [int(i) for i in beam_route(tree, jnp.asarray(full), k).leaves][:top]
    assert ranked == list(np.argsort(-scores[:spec.n_leaves], kind="stable")[:top])


@SETTINGS
@given(specs(), st.integers(1, 12), st.sampled_from(["mean", "attention"]))
def test_incremental_update_equals_rebuild(spec_fanout, n_new, kind):
    spec, fanout = spec_fanout
    rng = np.random.default_rng(7)
    new = [(rng.integers(3, 200, size=3).tolist(), (1000 + i, 1001 + i)) for i in range(n_new)]
    new_spec, old_of_new, dirty = append_leaves(spec, new, fanout)
    new_spec.validate(fanout)
    assert new_spec.leaf_tokens[:spec.n_leaves] == spec.leaf_tokens
    all_leaf = rng.standard_normal((new_spec.n_leaves, 2, 8)).astype(np.float32)
    # rebuild: every node of the new tree from scratch
    _, rebuilt = _jit_sweep(kind, new_spec, fanout, all_leaf, PARAMS)
    # incremental: old memories moved over, only dirty nodes recomputed
    _, old = _jit_sweep(kind, spec, fanout, all_leaf[:spec.n_leaves], PARAMS)
    tree = pad_tree(new_spec, fanout, LEAF_LEN)
    pid = padded_ids(new_spec, tree)
    mem = np.zeros((tree.num_nodes, 2, 8), np.float32)
    for i, o in enumerate(old_of_new):
        if o >= 0:
            mem[pid[i]] = old[o]
    mem[pid[:new_spec.n_leaves]] = all_leaf
    heights = new_spec.heights()
    levels = np.full(tree.level_nodes.shape, -1, np.int32)
    fill = {}
    for i in dirty:
        if heights[i] >= 1:
            levels[heights[i] - 1, fill.get(heights[i], 0)] = pid[i]
            fill[heights[i]] = fill.get(heights[i], 0) + 1
    out = jax.jit(functools.partial(sweep_memories, None, PARAMS, kind))(
        tree, jnp.asarray(mem), jnp.asarray(levels))
    np.testing.assert_allclose(np.asarray(out)[pid], rebuilt, atol=1e-5)
    # exactly the new leaves and their ancestors are recomputed
    parent, expect = new_spec.parents(), set()
    for leaf in range(spec.n_leaves, new_spec.n_leaves):
        node = leaf
        while node >= 0:
            expect.add(node)
            node = parent[node]
    assert set(dirty) == expect


def test_contiguous_groups_respect_fanout():
    rng = np.random.default_rng(8)
    for n in (9, 17, 64, 1000):
        v = rng.standard_normal((n, 4))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        groups = contiguous_groups(v, 8)
        assert groups[0][0] == 0 and groups[-1][1] == n
        assert all(a < b <= a + 8 for a, b in groups)
        assert all(groups[i][1] == groups[i + 1][0] for i in range(len(groups) - 1))
        assert len(groups) < n
