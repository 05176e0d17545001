"""The original's setup as a config (configs/varda_gpt2.yaml): GPT-2 with every weight trainable,
the embedded GPT-2 BPE, a WikiText-style file read line by line; here on a tiny random GPT-2."""

import pathlib

import jax
import numpy as np
import pytest

from gmem.config import load_config, to_object
from gmem.errors import GmemError
from gmem.systems.varda import VardaSystem

ROOT = pathlib.Path(__file__).resolve().parents[3]
TINY = ["model.source=random", "model.vocab_size=50257", "model.hidden_size=32", "model.num_hidden_layers=2",
        "model.num_attention_heads=4", "model.intermediate_size=64", "model.max_position_embeddings=64",
        "data.seq_len=32", "data.batch_size=8", "system.segment_len=16", "system.memory_size=64",
        "system.eval_fraction=0.25", "eval.every=0", "eval.batches=1", "train.progress=false"]


def _cfg(tmp, *overrides):
    lines = [" = Valkyria Chronicles III = ", "", " Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical "
             "role playing video game developed by Sega and Media.Vision for the PlayStation Portable .",
             " The game began development in 2010 , carrying over a large portion of the work done on "
             "Valkyria Chronicles II .", "", " = = Gameplay = = "] * 3
    corpus = tmp / "wiki.train.tokens"
    corpus.write_text("\n".join(lines) + "\n")
    return to_object(load_config(ROOT / "configs" / "varda_gpt2.yaml", [
        *TINY, f"system.corpus={corpus}", f"train.run_dir={tmp / 'run'}", *overrides]))


def test_config_is_the_originals_setup():
    cfg = to_object(load_config(ROOT / "configs" / "varda_gpt2.yaml"))
    o = cfg.system
    assert cfg.model.source == "/path/to/gpt2" and cfg.model.family == "gpt2" and cfg.adapters == []
    assert o.train_backbone and o.line_split and o.tokenizer == "gpt2"
    assert (o.memory_size, o.num_search_results, o.forgetfulness) == (10000, 5, 0.001)
    assert cfg.data.batch_size == 1
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule, cfg.optim.clip_norm) == (1e-4, 0.0, "constant", None)
    with pytest.raises(GmemError, match="/path/to/gpt2"):
        VardaSystem(cfg, load_data=False)   # the documented placeholder, not a file here


def test_full_finetuning_trains_every_weight_and_checkpoints_them(tmp_path):
    from gmem.train.infer import restore_run
    from gmem.train.loop import train
    cfg = _cfg(tmp_path, "train.steps=2", "checkpoint.every=2")
    system = VardaSystem(cfg)
    abstract, specs = system.abstract_base()
    assert abstract == {} and system.load_base() == {}     # nothing frozen
    stream, ev = system.data()
    texts = {system.tokenizer.decode(r[m > 0]) for r, m in zip(np.concatenate([stream.rows, ev]),
                                                                np.concatenate([stream.mask, system.eval_mask]))}
    assert " = = Gameplay = = \n" in texts and " = Valkyria Chronicles III = \n" in texts   # one row per line
    assert len(stream.rows) + len(ev) == 12                                                 # blanks skipped
    init = system.init_trainable({}, jax.random.PRNGKey(cfg.train.seed))
    assert set(init) == {"backbone", "adapters", "varda"}
    assert jax.tree.map(lambda a: (a.shape, a.dtype), system.abstract_trainable({})) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), init)
    # Gradients reach every backbone matrix (the wpe rows past seq_len excepted).
    batch = {k: jax.numpy.asarray(v) for k, v in system.batch(0).items()}
    grads = jax.grad(lambda t: system.loss(t, {}, batch, None)[0])(init)
    flat = jax.tree_util.tree_flatten_with_path(grads["backbone"])[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not float(abs(g).sum()) > 0]
    assert dead == [], dead
    summary = train(cfg, system=system, log=lambda *a: None)
    assert np.isfinite(summary["losses"]).all()
    cfg2, system2, plan, state, frozen, step = restore_run(tmp_path / "run")
    assert step == 2 and frozen == {} and system2.opts.train_backbone
    moved = jax.tree.map(lambda a, b: float(abs(np.asarray(a) - np.asarray(b)).max()),
                         state.trainable["backbone"], init["backbone"])
    assert min(jax.tree_util.tree_leaves(moved)) > 0   # the checkpoint holds the trained backbone
