"""The `regrad` system on the tiny config: its trainable tree, batches, and the identity case
(alpha = 0 or gamma = 0 leaves the base model's outputs exactly as they are)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.systems.regrad.modes import Answerer
from gmem.train import sharding as shd
from gmem.train.loop import make_plan
from gmem.train.system import build_system
from gmem.tree import flatten
from tolerance import assert_close_to_scale


def _system(make_cfg, *overrides):
    return build_system(make_cfg(*overrides))


def test_lora_on_the_upper_half_mlps_and_alpha_per_mode(make_cfg):
    s = _system(make_cfg)
    base = s.load_base()
    tr = s.init_trainable(base, jax.random.PRNGKey(0))
    paths = sorted(flatten(tr["lora"]))
    assert {p.split("/")[1] for p in paths} == {"layers_2", "layers_3"}        # 4 layers: upper half
    assert {p.split("/")[3] for p in paths} == {"gate_proj", "up_proj", "down_proj"}
    assert all(not np.any(np.asarray(x)) for p, x in flatten(tr["lora"]).items() if p.endswith("lora_B"))
    alpha = flatten(tr["alpha"])
    assert sorted(alpha) == paths and all(np.shape(a) == () and float(a) == pytest.approx(0.01)
                                          for a in alpha.values())
    assert s.structure["lora_layers"] == [2, 3] and s.structure["alpha_mode"] == "tie"
    full = _system(make_cfg, "system.alpha_mode=full").init_trainable(base, jax.random.PRNGKey(0))
    assert all(np.shape(flatten(full["alpha"])[p]) == np.shape(flatten(full["lora"])[p]) for p in paths)
    same = _system(make_cfg, "system.alpha_mode=same").init_trainable(base, jax.random.PRNGKey(0))
    assert np.shape(same["alpha"]) == ()
    fix = _system(make_cfg, "system.alpha_mode=fix", "system.init_alpha=0.5")
    assert "alpha" not in fix.init_trainable(base, jax.random.PRNGKey(0))
    assert float(flatten(fix.model.step_sizes({"lora": tr["lora"]}))[paths[0]]) == 0.5
    layers = _system(make_cfg, "system.lora_layers=[0]").init_trainable(base, jax.random.PRNGKey(0))
    assert {p.split("/")[1] for p in flatten(layers["lora"])} == {"layers_0"}
    specs = s.trainable_specs(s.abstract_trainable(s.abstract_base()[0]), s.abstract_base()[1])
    assert all(len(v) == 0 for v in flatten(specs["alpha"]).values())


def test_batches_are_static_deterministic_and_label_the_answer_and_newline(make_cfg):
    s = _system(make_cfg)
    shapes = s.batch_shapes()
    b = s.batch(3)
    assert {k: v.shape for k, v in b.items()} == {k: v.shape for k, v in shapes.items()}
    np.testing.assert_array_equal(b["qa_ids"], s.batch(3)["qa_ids"])
    assert not np.array_equal(b["qa_ids"], s.batch(0)["qa_ids"])
    tok = s.tokenizer
    recs = s.data().train_records()
    row = s.rows.rows(recs[:1])
    lab = row["qa_ids"][0][row["qa_labels"][0] > 0]
    assert tok.decode(lab.tolist()) == recs[0]["answer"] + "\n"
    prompt = tok.decode(row["qa_ids"][0][(row["qa_mask"][0] > 0) & (row["qa_labels"][0] == 0)].tolist())
    assert prompt.endswith("Answer: ") and "CONTEXT" not in prompt and recs[0]["question"] in prompt
    p0 = tok.decode(row["passage_ids"][0, 0][row["passage_mask"][0, 0] > 0].tolist())
    assert p0 == recs[0]["passages"][0][:len(p0)] and len(p0) == min(63, len(recs[0]["passages"][0]))
    ctx = _system(make_cfg, "system.blind_context=false", "system.max_prompt_len=320")
    row = ctx.rows.rows(recs[:1])
    text = tok.decode(row["qa_ids"][0][row["qa_mask"][0] > 0].tolist())
    assert text.startswith("## CONTEXT\nPassage 0: ") and "(CONTEXT END)" in text


def test_alpha_or_gamma_zero_gives_the_base_model_exactly(make_cfg):
    s = _system(make_cfg, "system.init_alpha=0.0", "system.max_new_tokens=6")
    frozen = s.load_base()
    tr = s.init_trainable(frozen, jax.random.PRNGKey(0))
    recs = s.data().dev_sets()["dev"]
    rows = s.rows.rows(recs)
    g = jax.jit(s.model.inner_grads)(tr["lora"], frozen, rows["passage_ids"][0], rows["passage_mask"][0])[1]
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree_util.tree_leaves(g))
    logits = jax.jit(s.model.logits)
    ids, mask = jnp.asarray(rows["qa_ids"]), jnp.asarray(rows["qa_mask"])
    base = np.asarray(logits(None, frozen, ids, mask))
    adapted = s.model.adapt(tr, g)                     # alpha = 0: theta' = theta, B still 0
    assert np.array_equal(np.asarray(logits(adapted, frozen, ids, mask)), base)
    direct = Answerer(s, tr, frozen, "fly").answer(recs, "direct")
    assert Answerer(s, tr, frozen, "fly").answer(recs, "regrad") == direct
    # gamma = 0 with a non-zero alpha: the same; with gamma = 1 the model moves
    tr1 = dict(tr, alpha=jax.tree_util.tree_map(lambda a: a + 0.5, tr["alpha"]))
    assert Answerer(s, tr1, frozen, "fly", gamma=0.0).answer(recs, "regrad") == direct
    assert np.array_equal(np.asarray(logits(s.model.adapt(tr1, g, 0.0), frozen, ids, mask)), base)
    assert not np.array_equal(np.asarray(logits(s.model.adapt(tr1, g, 1.0), frozen, ids, mask)), base)


def test_bad_options_and_records_are_one_line(make_cfg, regrad_files, tmp_path):
    with pytest.raises(GmemError, match=r"system.modes: unknown mode\(s\) \['icl'\]"):
        _system(make_cfg, "system.modes=[direct,icl]")
    with pytest.raises(GmemError, match="system.bank_dtype: 'int8'"):
        _system(make_cfg, "system.bank_dtype=int8")
    with pytest.raises(GmemError, match="adapters: ReGrad needs exactly one LoRA set"):
        _system(make_cfg, "adapters.0.kind=gift")
    bad = tmp_path / "bad.json"
    text = regrad_files["train"].read_text().replace('"question": "Who invented Ubrik?",', "", 1)
    bad.write_text(text)
    with pytest.raises(GmemError, match=rf"{bad}: record 2: field 'question' is missing"):
        _system(make_cfg, f"system.train_file={bad}")
    bad.write_text(regrad_files["train"].read_text().replace('"passage_ids": [', '"passage_ids": [7, ', 1))
    with pytest.raises(GmemError, match=rf"{bad}: record 0: field 'passage_ids' must be a list of 3 strings"):
        _system(make_cfg, f"system.train_file={bad}")


def test_a_broken_corpus_line_and_an_index_of_another_corpus_are_one_line(make_cfg, regrad_files, tmp_path):
    broken = tmp_path / "broken.tsv"
    lines = regrad_files["corpus"].read_text().splitlines()
    broken.write_text("\n".join(lines[:3] + ["42\tonly two fields"] + lines[3:]) + "\n")
    s = _system(make_cfg, f"system.corpus={broken}")
    with pytest.raises(GmemError, match=rf"{broken}, line 4: 2 tab-separated fields, expected 3"):
        s.data().corpus_identity()
    other = tmp_path / "other.tsv"
    other.write_text("\n".join(lines[:-1]) + "\n")                  # one passage fewer
    s = _system(make_cfg, f"system.corpus={other}")
    with pytest.raises(GmemError, match=r"gmem-retriever.json: this index was built from corpus "):
        s.data().retriever()


# system.passage_loop: the per-passage loop under the sharded vmap; system.meta_grad: the custom_vjp too
@pytest.mark.parametrize("loop,how", [("false", "reverse"), ("true", "reverse"), ("true", "linearize")])
def test_tasks_spread_over_8_devices_give_the_one_device_step(make_cfg, loop, how):
    """Each device runs its own tasks (the vmap over tasks is sharded like a batch, so no
    device holds every task's activations): one meta step on a data=8 mesh gives the loss (fp32,
    1e-5 relative) and the updated LoRA/alpha of the same step on one device. The updates are
    compared to 1e-3 of their scale: Adam's first step divides each gradient entry by its own
    size, so a 1e-6 relative difference in a tiny entry shows as ~1e-4 of the update, while a
    wrong or sign-flipped update is off by its whole scale."""
    cfg = make_cfg("data.batch_size=8", "optim.grad_accum=1", f"system.passage_loop={loop}",
                   f"system.meta_grad={how}")
    s = build_system(cfg)
    assert s.model.passage_loop == (loop == "true") and s.model.meta_grad.value == how
    out = []
    for mesh in (shd.make_mesh(devices=jax.devices()[:1]), shd.make_mesh(data=8)):
        plan = make_plan(cfg, s, mesh)
        with plan.context():
            frozen, state = plan.fresh_state(s, 0)
            state, m = plan.step(state, frozen, shd.global_batch(plan.mesh, s.batch(0), plan.rules))
            out.append((float(m["loss"]), jax.device_get(state.trainable)))
    (l1, t1), (l8, t8) = out
    assert abs(l1 - l8) <= 1e-5 * abs(l1)
    for a, b in zip(jax.tree_util.tree_leaves(t1), jax.tree_util.tree_leaves(t8)):
        assert_close_to_scale(np.asarray(b), np.asarray(a), 1e-3)
