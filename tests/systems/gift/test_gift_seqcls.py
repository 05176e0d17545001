"""gmem.systems.gift.seqcls (`system.name: gift`): sequence classification with GIFT / LoRA /
no adapters (linear probe) on a tiny random BERT, the hashed train/val/test split, and the
`adapters:` config fields reaching AdapterSpec. fp32; exact checks unless stated."""

import jax
import jax.numpy as jnp
import pytest

from gmem import config as gconfig
from gmem.adapters import AdapterSpec
from gmem.errors import GmemError
from gmem.systems.gift.seqcls import GiftSeqClsSystem, split_of
from gmem.adapters import specs_from_config

TINY = ["system.max_examples=120", "data.batch_size=4"]


def _cfg(name, extra=()):
    return gconfig.load_config(gconfig.CONFIG_DIR / name, list(extra))


def test_adapter_config_fields_reach_the_spec():
    cfg = _cfg("tiny_lm.yaml", [
        "adapters=[{kind: lora, name: a, targets: [q_proj], rank: 4, alpha: 8.0, use_rslora: true, "
        "layers_to_transform: [1]}, {kind: gift, name: g, targets: [q_proj, v_proj], rank: 2, "
        "share_projections: true, gift_act: gelu, in_projection_bias: true, out_projection_bias: true}]"])
    a, g = specs_from_config(cfg.adapters)
    assert a == AdapterSpec(kind="lora", name="a", targets=("q_proj",), rank=4, alpha=8.0,
                            use_rslora=True, layers_to_transform=(1,))
    assert a.scale == pytest.approx(8.0 / 2.0)                      # alpha / sqrt(r)
    assert g == AdapterSpec(kind="gift", name="g", targets=("q_proj", "v_proj"), rank=2,
                            share_projections=True, gift_act="gelu", in_projection_bias=True,
                            out_projection_bias=True)
    # The typed view round-trips too (checkpoint metadata goes through from_dict).
    typed = gconfig.from_dict(gconfig.to_dict(cfg))
    assert specs_from_config(typed.adapters) == [a, g]
    with pytest.raises(GmemError, match="gift_act"):
        specs_from_config(_cfg("tiny_lm.yaml", ["adapters=[{kind: gift, gift_act: nope}]"]).adapters)


def test_split_is_a_seeded_hash_of_the_key():
    keys = [f"title {i}" for i in range(4000)]
    splits = [split_of(k, 0, 0.1) for k in keys]
    assert splits[:50] == [split_of(k, 0, 0.1) for k in keys[:50]]   # independent of the other rows
    frac = {s: splits.count(s) / len(keys) for s in ("train", "val", "test")}
    assert abs(frac["val"] - 0.1) < 0.02 and abs(frac["test"] - 0.1) < 0.02   # binomial, 4 sigma
    assert splits != [split_of(k, 1, 0.1) for k in keys]             # the seed changes it


def _train_a_little(system, steps=6):
    base = system.load_base()
    tr = system.init_trainable(base, jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in system.batch(0).items()}
    grad = jax.jit(jax.value_and_grad(lambda t: system.loss(t, base, batch, None)[0]))
    loss0, g = grad(tr)
    for _ in range(steps):       # plain SGD on one batch: the loss must fall
        loss, g = grad(tr)
        tr = jax.tree_util.tree_map(lambda p, d: p - 0.5 * d, tr, g)
    return base, tr, g, float(loss0), float(grad(tr)[0])


def test_lora_and_gift_and_probe_on_tiny_bert():
    lora = GiftSeqClsSystem(_cfg("lora_minilm.yaml", TINY + ["model.source=random", "data.seq_len=32"]))
    assert len(lora.label_names) == 12 and "Uncategorized" in lora.label_names
    assert [s.kind for s in lora.specs] == ["lora"]
    assert sum(len(r[0]) for r in lora.rows.values()) == 120 and min(len(r[0]) for r in lora.rows.values()) > 0
    base, tr, g, l0, l1 = _train_a_little(lora)
    assert set(tr) == {"lora", "head"} and l1 < l0
    assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g["lora"])) > 0
    ev = lora.evaluate(tr, base)
    assert set(ev) == {"eval/accuracy", "eval/loss", "eval/test_accuracy", "eval/test_loss",
                       "params/adapters", "params/head"}
    # 2 layers x (query, value) x (A [32, 8] + B [8, 32]); head = classifier [32, 12] + bias.
    assert ev["params/adapters"] == 2 * 2 * 2 * 32 * 8 and ev["params/head"] == 32 * 12 + 12

    gift = GiftSeqClsSystem(_cfg("gift_tiny.yaml", TINY))
    assert [(s.kind, s.name, s.rank) for s in gift.specs] == [("gift", "gift", 4)]
    _, tr, g, l0, l1 = _train_a_little(gift)
    assert set(tr) == {"gift", "head"} and l1 < l0
    assert float(jnp.abs(g["gift"]["query"]["psi"]).max()) > 0

    probe = GiftSeqClsSystem(_cfg("probe_minilm.yaml", TINY + ["model.source=random", "data.seq_len=32"]))
    assert probe.specs == []
    base, tr, g, l0, l1 = _train_a_little(probe)
    assert set(tr) == {"head"} and l1 < l0
    # Only the head moved: the encoder's features are the frozen base's.
    assert probe.num_trainable(tr) == {"params/adapters": 0, "params/head": 32 * 12 + 12}


def test_config_errors():
    with pytest.raises(GmemError, match="eval_fraction"):
        GiftSeqClsSystem(_cfg("gift_tiny.yaml", TINY + ["system.eval_fraction=0.5"]))
    with pytest.raises(GmemError, match="'head'"):
        GiftSeqClsSystem(_cfg("probe_minilm.yaml", TINY + ["model.source=random",
                                                           "adapters=[{kind: lora, name: head, targets: [query]}]"]))
