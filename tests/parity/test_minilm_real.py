"""Real weights: all-MiniLM-L6-v2 (the embedded default BERT, from gmem.assets) sentence
embeddings from gmem's BertModel match transformers' BertModel within 1e-5.

Sentence embedding = mean of the last hidden states over real tokens, L2-normalised (the
sentence-transformers recipe of this model: 1_Pooling/config.json says mean pooling).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gmem.assets  # noqa: E402
from gmem.hf.convert import load_pretrained  # noqa: E402
from gmem.models.bert import BertModel  # noqa: E402

SENTENCES = [
    "place of birth",
    "born in",
    "spouse",
    "married to",
    "capital of",
    "The quick brown fox jumps over the lazy dog, while the cat sleeps in the warm afternoon sun.",
]


def _mean_pool(hidden_BLD: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
    m = mask_BL[..., None].astype(np.float64)
    emb = (hidden_BLD.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


@pytest.mark.slow
def test_minilm_sentence_embeddings_match_transformers():
    folder = gmem.assets.path("all-minilm-l6-v2")
    model, cfg, params = load_pretrained(folder)
    assert isinstance(model, BertModel) and cfg.hidden_size == 384 and cfg.num_hidden_layers == 6
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    batch = tok(SENTENCES, padding=True, return_tensors="np")
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert (mask == 0).any()  # the batch is padded

    hidden, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    got = _mean_pool(np.asarray(hidden), mask)

    hf = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        ref_hidden = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    ref = _mean_pool(ref_hidden, mask)

    err = np.abs(got - ref).max()
    assert err <= 1e-5, err
    # And the embeddings mean what they should (values from specs/offline-assets.md, +-0.05).
    cos = got @ got.T
    assert abs(cos[0, 1] - 0.72) <= 0.05   # "place of birth" ~ "born in"
    assert abs(cos[2, 3] - 0.78) <= 0.05   # "spouse" ~ "married to"
    assert abs(cos[4, 2] - 0.08) <= 0.05   # "capital of" ~ "spouse"
