"""infer: a trained checkpoint is restored (base re-imported, trainables from Orbax), evaluated,
generates, and exports its adapters (PEFT folder) and the merged model (HF folder)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmem.adapters.peft_io import load_peft
from gmem.hf.convert import load_pretrained
from gmem.train.export import _rules, export_hf, export_peft
from gmem.train.infer import run_inference
from gmem.train.loop import train
from train_helpers import tiny_cfg


def test_infer_and_exports(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=3", "checkpoint.every=3", "optim.lr=5e-2")
    train(cfg, log=lambda *_: None)
    res = run_inference(tmp_path / "run", tmp_path / "out", ["system.max_new_tokens=5"],
                        prompts=["to be", "or not"])
    rows = [json.loads(l) for l in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["to be", "or not"] and all("generation" in r for r in rows)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["step"] == 3 and np.isfinite(metrics["eval/loss"])

    system, state, frozen = res["system"], res["state"], res["frozen"]
    trained = jax.device_get(state.trainable)
    assert np.abs(trained["default"]["model"]["layers_0"]["self_attn"]["q_proj"]["lora_B"]).max() > 0

    # PEFT folder: reads back to the same LoRA tree.
    (peft_dir,) = export_peft(system, state.trainable, tmp_path / "peft")
    spec, tree = load_peft(peft_dir, _rules(system), jax.device_get(frozen))
    assert (spec.rank, spec.alpha) == (cfg.adapters[0].rank, cfg.adapters[0].alpha)
    chex.assert_trees_all_close(tree, trained["default"], rtol=1e-6)

    # Merged HF folder: reloads as a plain model whose logits equal base + adapters.
    hf_dir = export_hf(system, state.trainable, frozen, tmp_path / "merged")
    module, _, merged = load_pretrained(hf_dir)
    ids = jnp.asarray([[1, 5, 9, 42, 7, 3]])
    want, _ = system.module.apply(system.variables(state.trainable, frozen), ids)
    got, _ = module.apply({"params": merged}, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
