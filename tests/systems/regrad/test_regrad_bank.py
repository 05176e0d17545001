"""The gradient bank pass: one gradient per distinct passage, sharded safetensors written
atomically, resumable after a kill with nothing lost or duplicated, and refusing (one line,
nothing written lost) a bank of other inputs, a missing passage or a file of wrong shapes."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gmem.errors import GmemError
from gmem.systems.regrad import bank as B
from gmem.train.passes import run_pass
from gmem.train.system import build_system
from gmem.tree import flatten

IDENT = {"structure": "tiny", "step": 0}


@pytest.fixture(scope="module")
def built(regrad_files, tmp_path_factory):
    """(make(*overrides) -> system, trainable, frozen, reference bank dir)."""
    from conftest import ROOT
    from gmem import config as gconfig

    f = regrad_files
    run = tmp_path_factory.mktemp("bank_run")

    def make(*overrides):
        ov = [f"system.corpus={f['corpus']}", f"system.index={f['index']}",
              f"system.train_file={f['train']}", f"system.dev_files={{dev: '{f['dev']}'}}",
              f"train.run_dir={run}", "model.remat=false", "system.bank_chunk=2"]
        return build_system(gconfig.to_object(gconfig.load_config(
            ROOT / "configs" / "regrad_tiny.yaml", ov + list(overrides))))
    s = make()
    frozen = s.load_base()
    tr = s.init_trainable(frozen, jax.random.PRNGKey(0))
    keys = iter(jax.random.split(jax.random.PRNGKey(5), 64))           # B != 0: A gets gradients
    tr["lora"] = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape),
                                        tr["lora"])
    ref = s.bank_dir                     # RUN_DIR/passes/bank, where inference looks
    run_pass(s, "bank", ref, tr, frozen, identity=IDENT, progress=False, log=lambda *a: None)
    return make, s, tr, frozen, ref


def _shards(d):
    return {p.name: load_file(str(p)) for p in sorted(d.glob("shard-*.safetensors"))}


def test_bank_holds_each_passage_once_with_its_own_gradient(built):
    make, s, tr, frozen, ref = built
    meta = json.loads((ref / B.META).read_text())
    index = json.loads((ref / B.INDEX).read_text())
    dev = s.data().dev_sets()["dev"]
    retrieved = [k for r in dev for k, t in zip(r["passage_ids"], r["passages"]) if t]
    assert sorted(index) == sorted(set(retrieved)) and len(retrieved) > len(index)  # shared once
    assert meta["passages"] == len(index) and meta["dtype"] == "float32"
    assert meta["bytes_per_passage"] == 4 * sum(int(np.prod(v)) for v in meta["lora"].values())
    assert meta["corpus"]["fingerprint"] == s.data().corpus().fingerprint()
    bank = s.open_bank(tr, frozen)
    key = dev[0]["passage_ids"][0]
    text = dev[0]["passages"][0]
    rows = s.rows.rows([{**dev[0], "passages": [text, "", ""]}])
    want = s.model.inner_grads(tr["lora"], frozen, rows["passage_ids"][0], rows["passage_mask"][0])[1]
    for p, g in flatten(jax.device_get(want)).items():
        assert np.abs(bank.grads(key)[p] - g).max() <= 1e-5 * np.abs(g).max()


def test_a_killed_pass_resumes_with_no_passage_lost_or_duplicated(built, tmp_path, monkeypatch):
    make, s, tr, frozen, ref = built
    out = tmp_path / "bank"
    real = B.write_shard
    calls = {"n": 0}

    def dying(out_dir, start, keys, grads, dtype):
        calls["n"] += 1
        if calls["n"] == 2:   # killed mid-write: a partial temporary file is left behind
            (out_dir / (B.shard_name(start, start + len(keys)) + ".tmp")).write_bytes(b"\x00" * 10)
            raise KeyboardInterrupt("killed")
        path = real(out_dir, start, keys, grads, dtype)
        if calls["n"] == 4:   # killed after the rename, before progress.json was committed
            raise KeyboardInterrupt("killed")
        return path

    monkeypatch.setattr(B, "write_shard", dying)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run_pass(s, "bank", out, tr, frozen, identity=IDENT, progress=False, log=lambda *a: None)
    assert json.loads((out / "progress.json").read_text())["done"] == 4       # chunks 1 and 3 committed
    # the first kill's partial .tmp was cleared by the second run; its own kill left shard 4-6
    # written but uncommitted, which the resumed run deletes and writes again
    assert not list(out.glob("*.tmp")) and len(list(out.glob("shard-*.safetensors"))) == 3
    monkeypatch.setattr(B, "write_shard", real)
    run_pass(s, "bank", out, tr, frozen, identity=IDENT, progress=False, log=lambda *a: None)
    got, want = _shards(out), _shards(ref)
    assert sorted(got) == sorted(want) and not list(out.glob("*.tmp"))
    for name in want:
        assert sorted(got[name]) == sorted(want[name])
        for k in want[name]:
            np.testing.assert_array_equal(got[name][k], want[name][k])
    keys = [k for p in sorted(out.glob("shard-*.safetensors")) for k in B.shard_keys(p)]
    assert len(keys) == len(set(keys)) == json.loads((ref / B.META).read_text())["passages"]
    assert json.loads((out / B.INDEX).read_text()) == json.loads((ref / B.INDEX).read_text())


def test_bfloat16_bank_halves_the_size(built, tmp_path):
    make, s, tr, frozen, ref = built
    s16 = make("system.bank_dtype=bfloat16")
    out = tmp_path / "b16"
    run_pass(s16, "bank", out, tr, frozen, identity=IDENT, progress=False, log=lambda *a: None)
    m16, m32 = (json.loads((d / B.META).read_text()) for d in (out, ref))
    assert m16["bytes_per_passage"] * 2 == m32["bytes_per_passage"]
    key = next(iter(json.loads((ref / B.INDEX).read_text())))
    a, b = B.Bank(out, {}).grads(key), B.Bank(ref, {}).grads(key)
    for p in a:
        np.testing.assert_allclose(a[p], b[p], rtol=1e-2, atol=1e-6)


def test_a_bank_for_other_inputs_is_refused_and_nothing_written_is_lost(built, tmp_path, monkeypatch):
    make, s, tr, frozen, ref = built
    out = tmp_path / "bank"
    real, calls = B.write_shard, {"n": 0}

    def dying(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a)

    monkeypatch.setattr(B, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        run_pass(s, "bank", out, tr, frozen, identity=IDENT, progress=False, log=lambda *a: None)
    monkeypatch.setattr(B, "write_shard", real)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = make("model.seed=1")                               # another base model
    with pytest.raises(GmemError, match=rf"{out / 'bank.json'}: this bank was built for another base: "):
        run_pass(other, "bank", out, tr, other.load_base(), identity=IDENT, progress=False,
                 log=lambda *a: None)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}
    # opening for inference: another base, another corpus, other LoRA shapes
    with pytest.raises(GmemError, match=r"bank.json: this bank was built for another base: "):
        B.Bank(ref, {"base": other.base_identity(other.load_base())})
    with pytest.raises(GmemError, match=r"bank.json: this bank was built for another corpus: "):
        B.Bank(ref, {"corpus": {"name": "x", "fingerprint": "0" * 64}})
    r8 = make("adapters.0.rank=8")
    with pytest.raises(GmemError, match=r"bank.json: this bank was built for another lora: "):
        r8.open_bank(r8.init_trainable(frozen, jax.random.PRNGKey(0)), frozen)
    with pytest.raises(GmemError, match=rf"{out}: the bank holds 2 of its \d+ passages; finish it"):
        B.Bank(out, {})


def test_missing_passage_and_wrong_shapes_name_the_id_and_file(built, tmp_path):
    make, s, tr, frozen, ref = built
    bank = s.open_bank(tr, frozen)
    with pytest.raises(GmemError, match=r"dev.json: record 3: passage id 'nope' is not in the gradient bank"):
        bank.summed(["nope"], "dev.json: record 3")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(ref, bad)
    shard = sorted(bad.glob("shard-*.safetensors"))[0]
    tensors = load_file(str(shard))
    name = sorted(tensors)[0]
    tensors[name] = np.zeros((3, 3), np.float32)
    keys = B.shard_keys(shard)
    save_file(tensors, str(shard), metadata={"format": B.FORMAT, "keys": json.dumps(keys)})
    k = keys[int(name.split("/")[0])]
    with pytest.raises(GmemError, match=rf"{shard}: tensor '{name}' \(passage '{k}'\) has shape \[3, 3\]"):
        B.Bank(bad, {}).grads(k)
    shard.write_bytes(b"garbage")
    (bad / B.INDEX).unlink()
    with pytest.raises(GmemError, match=rf"{shard}: not a gradient-bank shard"):
        B.Bank(bad, {})
