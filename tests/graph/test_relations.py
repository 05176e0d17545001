"""Relation semantics: tables from files, KGE checkpoints, seeded random, MiniLM through gmem's
BERT (slow: real weights, vs transformers + mean pooling at 1e-5), and loading into the SGM."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from gmem.errors import GmemError
from gmem.graph import layers
from gmem.graph.relations import relation_semantics, set_relation_semantics

NAMES = ["knows", "likes", "works with"]


def test_random_is_seeded_and_only_on_request(tmp_path):
    a = relation_semantics(NAMES, "random", dim=8, seed=3)
    b = relation_semantics(NAMES, "random", dim=8, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 8) and a.dtype == np.float32 and 0.005 < a.std() < 0.05
    inv = relation_semantics(NAMES, "random", dim=8, seed=3, add_inverse=True)
    np.testing.assert_array_equal(inv[3:], inv[:3])       # inverse r + R = vector of r
    with pytest.raises(GmemError, match="not found"):
        relation_semantics(NAMES, str(tmp_path / "missing.npy"))


def test_tables_from_files(tmp_path):
    t = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.save(tmp_path / "r.npy", t)
    np.testing.assert_array_equal(relation_semantics(NAMES, str(tmp_path / "r.npy")), t)
    torch.save({"rel_embeddings": torch.tensor(t)}, tmp_path / "r.pt")
    np.testing.assert_array_equal(relation_semantics(NAMES, str(tmp_path / "r.pt")), t)
    torch.save(torch.tensor(t), tmp_path / "plain.pt")
    np.testing.assert_array_equal(relation_semantics(NAMES, str(tmp_path / "plain.pt")), t)
    from safetensors.numpy import save_file
    save_file({"rel_embeddings": t}, str(tmp_path / "r.safetensors"))
    np.testing.assert_array_equal(relation_semantics(NAMES, str(tmp_path / "r.safetensors")), t)
    # Errors: wrong row count, missing key, unreadable file.
    np.save(tmp_path / "bad.npy", t[:2])
    with pytest.raises(GmemError, match=r"bad.npy: relation table has shape \(2, 5\); expected \[3, d\]"):
        relation_semantics(NAMES, str(tmp_path / "bad.npy"))
    torch.save({"other": torch.tensor(t)}, tmp_path / "nokey.pt")
    with pytest.raises(GmemError, match="without key 'rel_embeddings'"):
        relation_semantics(NAMES, str(tmp_path / "nokey.pt"))
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(GmemError, match="junk.pt: cannot read as a torch file"):
        relation_semantics(NAMES, str(tmp_path / "junk.pt"))


def test_kge_checkpoints(tmp_path):
    rel = torch.randn(3, 4)
    torch.save({"rel_embeddings.weight": rel, "ent_embeddings.weight": torch.randn(7, 4)},
               tmp_path / "transe.ckpt")
    np.testing.assert_allclose(relation_semantics(NAMES, f"kge:{tmp_path}/transe.ckpt"), rel)
    # Entity width differs: relation vectors concatenated with themselves.
    torch.save({"rel_embeddings.weight": rel, "ent_embeddings.weight": torch.randn(7, 8)},
               tmp_path / "wide.ckpt")
    np.testing.assert_allclose(relation_semantics(NAMES, f"kge:{tmp_path}/wide.ckpt"),
                               torch.cat([rel, rel], -1))
    im = torch.randn(3, 4)
    torch.save({"rel_re_embeddings.weight": rel, "rel_im_embeddings.weight": im,
                "ent_re_embeddings.weight": torch.randn(7, 4)}, tmp_path / "complex.ckpt")
    np.testing.assert_allclose(relation_semantics(NAMES, f"kge:{tmp_path}/complex.ckpt"),
                               torch.cat([rel, im], -1))
    torch.save({"x": rel}, tmp_path / "none.ckpt")
    with pytest.raises(GmemError, match="no rel_embeddings.weight"):
        relation_semantics(NAMES, f"kge:{tmp_path}/none.ckpt")


def test_set_relation_semantics_into_sgm_params():
    import jax.numpy as jnp
    import jraph
    cfg = layers.SemanticGraphConfig(num_edge_relations=6, rel_dim=5, graph_dim=8, sgm_heads=2)
    g = jraph.GraphsTuple(nodes={"rel_hist": jnp.zeros((2, 6))}, edges={"relation": jnp.zeros(1, jnp.int32)},
                          senders=jnp.ones(1, jnp.int32), receivers=jnp.zeros(1, jnp.int32),
                          n_node=jnp.asarray([2]), n_edge=jnp.asarray([1]), globals=None)
    params = {"sgm": jax.jit(layers.SemanticGraphModule(cfg).init)(jax.random.key(0), g)["params"]}
    table = relation_semantics(NAMES, "random", dim=5, add_inverse=True)
    new = set_relation_semantics(params, table)
    np.testing.assert_array_equal(nn.unbox(new["sgm"]["rel_semantic"]), table)
    assert not np.array_equal(nn.unbox(params["sgm"]["rel_semantic"]), table)  # input kept
    with pytest.raises(GmemError, match=r"table \(3, 5\) does not fit rel_semantic \(6, 5\)"):
        set_relation_semantics(params, table[:3])


@pytest.mark.slow
def test_minilm_matches_transformers_mean_pooling():
    import gmem.assets
    from transformers import AutoModel, AutoTokenizer
    texts = {"works with": "a person who works together with another"}
    got = relation_semantics(NAMES, "bert", texts=texts, add_inverse=True)
    assert got.shape == (6, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    folder = str(gmem.assets.path("all-minilm-l6-v2"))
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    enc = tok(["knows", "likes", texts["works with"]], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(got[:3], want, atol=1e-5)
    np.testing.assert_array_equal(got[3:], got[:3])
    with pytest.raises(GmemError, match="unknown relations"):
        relation_semantics(NAMES, "bert", texts={"hates": "x"})
