"""Inputs from others: crafted metadata, caches, indexes, data lines and resume files get clear
errors or defined behaviour, never a download, a stale answer, a huge allocation or a crash."""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings

import numpy as np
import pytest

import h2mt_jax
from conftest import make_tiny, tiny_lm_with
from gguf_util import write_gguf
from h2mt_jax.data.records import DataWarning
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.index import Index
from h2mt_jax.weights import CheckpointError, cache


@pytest.fixture(scope="module")
def h2mt(smollm2_tokenizer):
    lm = tiny_lm_with(smollm2_tokenizer, seed=1, name="tiny-random-smollm2")
    return H2MT.create(lm, H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4), k=2))


@pytest.fixture(scope="module")
def saved(h2mt, tmp_path_factory):
    from h2mt_jax.data.synthetic import generate_manual

    d = tmp_path_factory.mktemp("idx")
    h2mt.save_index(h2mt.build(generate_manual(2, chapters=2).text, fmt="markdown"), d)
    return d


# ------------------------------------------------------------------ 1. metadata chooses nothing
@pytest.mark.parametrize("named", ["someone/their-model", "../../etc/passwd", "/tmp/x.gguf"])
def test_metadata_never_opens_or_fetches_what_it_names(saved, tmp_path, named, monkeypatch):
    import shutil

    d = tmp_path / "idx"
    shutil.copytree(saved, d)
    meta_path = d / "model" / "h2mt.json"
    meta = json.loads(meta_path.read_text())
    meta["backbone"] = named
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setattr(h2mt_jax.lm, "load_lm", lambda *a, **k: pytest.fail("loaded " + named))
    with pytest.raises(ValueError, match="not an offline registry name.*lm="):
        H2MT.load_index(d)


def test_a_backbone_of_another_width_is_named(saved, h2mt):
    other = h2mt_jax.random_lm(seed=0, vocab_size=h2mt.lm.config.vocab_size, hidden_size=48,
                               intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                               head_dim=24, max_position_embeddings=2048)
    other.name = "wider"
    with pytest.raises(ValueError, match="'tiny-random-smollm2' \\(d=32\\).*'wider' \\(d=48\\)"):
        H2MT.load_index(saved, lm=other)


# ------------------------------------------------------------------ 2 + 7. the weight cache
def test_a_rewritten_gguf_with_restored_mtime_is_not_served_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("H2MT_JAX_CACHE", str(tmp_path / "cache"))
    a, b = make_tiny(tmp_path, "llama", seed=0), make_tiny(tmp_path, "llama", seed=1)
    path = tmp_path / "m.gguf"
    write_gguf(a, path)
    ids = np.arange(1, 20)[None]
    first = np.asarray(h2mt_jax.load_lm(path, tokenizer=False).logits(ids))
    st = os.stat(path)
    write_gguf(b, path)  # same size, other weights
    assert os.stat(path).st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back
    second = np.asarray(h2mt_jax.load_lm(path, tokenizer=False).logits(ids))
    ref = np.asarray(h2mt_jax.load_lm(b, tokenizer=False).logits(ids))
    assert np.abs(second - first).max() > 1e-3
    np.testing.assert_allclose(second, ref, atol=1e-5)


def _hammer(root, role, n, out):
    os.environ["H2MT_JAX_CACHE"] = root
    from h2mt_jax.backbone.config import BackboneConfig
    from h2mt_jax.weights import cache as c

    cfg = BackboneConfig(vocab_size=8, hidden_size=4, intermediate_size=8, num_layers=1,
                         num_heads=1, num_kv_heads=1, head_dim=4, max_position_embeddings=16)
    misses = 0
    for i in range(n):
        if role == "writer":
            c.save("k", cfg, {"w": np.full((4, 4), float(i), np.float32)})
        elif c.load("k") is None:
            misses += 1
    out.put(misses)


def test_concurrent_writers_never_lose_a_reader_load(tmp_path):
    root = str(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    first = ctx.Process(target=_hammer, args=(root, "writer", 1, out))  # the entry exists first
    first.start()
    first.join(120)
    assert out.get(timeout=5) == 0
    procs = [ctx.Process(target=_hammer, args=(root, role, 60, out))
             for role in ("writer", "writer", "reader")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sorted(out.get(timeout=5) for _ in procs) == [0, 0, 0]
    assert not [p for p in os.listdir(os.path.join(root, "weights")) if p.startswith(".tmp")]


# ------------------------------------------------------------------ 3. crafted indexes
@pytest.mark.parametrize("field, value, message", [
    ("children", lambda c: [[0, -1]] + c[1:], "children"),
    ("children", lambda c: c[:-1] + [c[-1] + [len(c) - 1]], "children"),  # a cycle to itself
    ("leaf_spans", lambda s: [[0, 10 ** 9]] + s[1:], "leaf_spans\\[0\\]"),
    ("padding", lambda p: {**p, "leaves": 2 ** 40}, "padding.leaves"),
    ("padding", lambda p: {**p, "height": 4096}, "padding.height"),
])
def test_crafted_index_fields_are_named(saved, tmp_path, field, value, message):
    import shutil

    d = tmp_path / "idx"
    shutil.copytree(saved, d)
    meta = json.loads((d / "index.json").read_text())
    meta[field] = value(meta[field])
    (d / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        Index.load(d)


def test_memories_of_another_shape_are_named(saved, h2mt, tmp_path):
    import shutil

    d = tmp_path / "idx"
    shutil.copytree(saved, d)
    mem = np.load(d / "memories.npy")
    np.save(d / "memories.npy", mem[:, :, :16])
    with pytest.raises(ValueError, match="memories.npy holds memories of shape"):
        H2MT.load_index(d, lm=h2mt.lm)


# ------------------------------------------------------------------ 4. data lines
def test_deeply_nested_json_line_is_a_malformed_line(tmp_path):
    from h2mt_jax.data.longbench import load_longbench

    path = tmp_path / "deep.jsonl"
    good = json.dumps({"input": "q", "context": "c", "answers": ["a"], "_id": "1"})
    path.write_text(good + "\n" + "[" * 100_000 + "\n" + good.replace('"1"', '"2"') + "\n")
    with pytest.warns(DataWarning, match="line 2: bad JSON \\(nested too deeply\\)"):
        recs = load_longbench(path)
    assert [r.id for r in recs] == ["1", "2"]


# ------------------------------------------------------------------ 6. evaluation resume
def test_resume_skips_foreign_lines_and_rows_of_other_settings(tmp_path):
    from h2mt_jax.eval.runner import _done

    partial = tmp_path / "out.json.partial.jsonl"
    rows = [{"method": "h2mt", "id": "a", "settings": "S", "f1": 1.0},
            {"method": "h2mt", "id": "b", "settings": "OTHER", "f1": 0.0},
            "not json at all", {"no": "keys"}, [1, 2]]
    partial.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="4 line\\(s\\) not reused"):
        done = _done(str(partial), "S")
    assert list(done) == [("h2mt", "a")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _done(str(tmp_path / "absent"), "S") == {}


# ------------------------------------------------------------------ 8. malformed checkpoints
def test_state_dict_with_a_non_tensor_value(tmp_path):
    import torch

    from h2mt_jax.hmt.convert import read_state_dict

    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="'note' is a str, not a tensor"):
        read_state_dict(path)


def test_gguf_without_a_required_field_or_with_zero_heads(tmp_path):
    hf = make_tiny(tmp_path, "llama")
    for name, edit in (("noembed", {"drop": "llama.embedding_length"}),
                       ("zeroheads", {"set": ("llama.attention.head_count", 0)})):
        path = tmp_path / f"{name}.gguf"
        write_gguf(hf, path, **edit)
        with pytest.raises(CheckpointError, match=f"{name}.gguf"):
            h2mt_jax.load_lm(path, tokenizer=False)
    assert cache.FORMAT_VERSION >= 2


def test_hub_downloads_are_pinned_and_record_their_commit(tmp_path, monkeypatch):
    # Given a hub that records what was asked and serves snapshots named by commit
    import huggingface_hub

    from h2mt_jax.weights import registry

    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, revision))
        path = tmp_path / repo_id.replace("/", "--") / "snapshots" / ("c0ffee" * 7)[:40]
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    # When a hub id is resolved without a revision: "main", and the commit got is recorded
    src = registry.resolve("someone/some-model")
    assert asked[-1] == ("someone/some-model", "main") and src.revision == ("c0ffee" * 7)[:40]
    # with one: exactly that revision
    registry.resolve("someone/some-model", revision="v1.0")
    assert asked[-1] == ("someone/some-model", "v1.0")
    # a registry name with a pinned commit downloads that commit unless told otherwise
    pinned = "1234567890abcdef1234567890abcdef12345678"
    monkeypatch.setitem(registry.KNOWN_MODELS, "pinned-model",
                        registry.KnownModel("org/pinned", revision=pinned))
    registry.resolve("pinned-model")
    assert asked[-1] == ("org/pinned", pinned)
    registry.resolve("pinned-model", revision="main")
    assert asked[-1] == ("org/pinned", "main")


def test_a_cache_directory_of_another_user_is_refused(tmp_path, monkeypatch):
    # Given a cache directory that belongs to someone else (uid seen as another's)
    monkeypatch.setenv("H2MT_JAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    hf = make_tiny(tmp_path)
    path = tmp_path / "tiny.gguf"
    write_gguf(hf, path)
    h2mt_jax.load_lm(path, tokenizer=False)  # mine: used
    assert os.listdir(tmp_path / "cache")
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path / "cache").st_uid + 1)
    # When weights are loaded through it, Then the cache is refused with the reason
    with pytest.raises(cache.CacheOwnerError, match="owned by uid .* set H2MT_JAX_CACHE"):
        h2mt_jax.load_lm(path, tokenizer=False)
