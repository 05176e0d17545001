"""The lm system's line_split corpus: one row per line (the original VardaGPT's loader), pads
masked out of the loss and the evaluation."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from gmem.config import load_config, to_object
from gmem.systems.lm import LMSystem

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_line_split_rows_and_masked_loss(tmp_path):
    lines = [" = Valkyria Chronicles III = ", "", " Senjō no Valkyria 3 is a tactical role playing game .",
             " It was released in January 2011 in Japan .", "", " The game began development in 2010 ."] * 4
    corpus = tmp_path / "wiki.train.tokens"
    corpus.write_text("\n".join(lines) + "\n")
    cfg = to_object(load_config(ROOT / "configs" / "tiny_lm.yaml", [
        f"system.corpus={corpus}", "system.line_split=true", "system.eval_fraction=0.25",
        "data.seq_len=48", "data.batch_size=4", "adapters=[]", f"train.run_dir={tmp_path / 'run'}"]))
    system = LMSystem(cfg)
    stream, ev = system.data()
    assert len(stream.rows) + len(ev) == 16            # 4 x 4 non-blank lines, blanks skipped
    assert set(system.batch_shapes()) == {"input_ids", "mask"}
    batch = system.batch(0)
    tok = system.tokenizer
    for ids, m in zip(batch["input_ids"], batch["mask"]):
        real = ids[m > 0]
        full = [list(tok.encode(x + "\n")) for x in lines if x]
        assert real.tolist() in full or (len(real) == 49 and any(f[:49] == real.tolist() for f in full))
        assert (m[len(real):] == 0).all() and (m[:len(real)] == 1).all()
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(0))
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    loss = float(system.loss(trainable, frozen, b, None)[0])
    other = dict(b, input_ids=jnp.where(b["mask"] > 0, b["input_ids"], 7))   # change only the pads
    assert abs(float(system.loss(trainable, frozen, other, None)[0]) - loss) < 1e-6
    assert float(system.loss(trainable, frozen, b, None)[1]["tokens"]) == float(b["mask"][:, 1:].sum())
    assert np.isfinite(system.evaluate(trainable, frozen)["eval/loss"])
