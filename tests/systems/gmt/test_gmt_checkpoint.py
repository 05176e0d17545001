"""Import of GMT's own checkpoint files (graph_encoder.pth, memory_attn.pth, gmt_config.json),
on state dicts built with the original's key names and shapes: the imported graph encoder
computes what torch modules built as the reference (nn.MultiheadAttention, LayerNorm, Linear)
compute (atol 1e-5), and the memory blocks land in a tiny GMT system."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gmem.errors import GmemError
from gmem.graph.layers import RelationContextLayer
from gmem.systems.gmt import checkpoint as C
from gmem.nn.projection import Projection
from gmem.systems.gmt.graph import GraphMemoryConfig, MemoryTokenizer

D_G, H, M, R, D_REL, D_LLM = 16, 2, 4, 5, 12, 32


class RefLayer(torch.nn.Module):
    """GMT's RelationContextLayer: each edge's state attends to its one context vector."""

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(D_G, H, dropout=0.1, batch_first=True)
        self.norm1, self.norm2 = torch.nn.LayerNorm(D_G), torch.nn.LayerNorm(D_G)
        self.linear1, self.linear2 = torch.nn.Linear(D_G, 4 * D_G), torch.nn.Linear(4 * D_G, D_G)

    def forward(self, s, c):
        a, _ = self.attn(s[:, None], c[:, None], c[:, None])
        s = self.norm1(s + a[:, 0])
        return self.norm2(s + self.linear2(torch.nn.functional.gelu(self.linear1(s))))


class RefEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sgm = torch.nn.Module()
        self.sgm.rel_semantic = torch.nn.Embedding(R, D_REL)
        self.sgm.rel_proj = torch.nn.Linear(D_REL, D_G)
        self.sgm.layers = torch.nn.ModuleList([RefLayer(), RefLayer()])
        self.tokenizer = torch.nn.Module()
        self.tokenizer.memory_queries = torch.nn.Parameter(torch.randn(M, D_G) * 0.5)
        self.tokenizer.attn = torch.nn.MultiheadAttention(D_G, H, batch_first=True)
        self.proj = torch.nn.Linear(D_G, D_LLM)

    def memory(self, s, mask):
        q = self.tokenizer.memory_queries[None].expand(s.shape[0], -1, -1)
        mem, _ = self.tokenizer.attn(q, s, s, key_padding_mask=~mask)
        mem = mem.masked_fill(~mask.any(-1)[:, None, None], 0.0)
        return self.proj(mem)


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    enc = RefEncoder().eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)   # non-trivial biases and norms
    return enc


def test_graph_encoder_import_matches_torch(ref):
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    p = C.graph_encoder_params({k: v.numpy() for k, v in sd.items()})
    cfg = GraphMemoryConfig(num_edge_relations=R, rel_dim=D_REL, graph_dim=D_G, sgm_heads=H,
                            memory_heads=H, num_memory_tokens=M, llm_dim=D_LLM, dropout=0.0)
    rng = np.random.default_rng(0)
    s, c = rng.standard_normal((7, D_G)).astype(np.float32), rng.standard_normal((7, D_G)).astype(np.float32)
    for i in range(2):
        got = RelationContextLayer(cfg).apply({"params": jax.tree_util.tree_map(jnp.asarray, p["sgm"][f"layers_{i}"])},
                                              jnp.asarray(s), jnp.asarray(c))
        with torch.no_grad():
            want = ref.sgm.layers[i](torch.from_numpy(s), torch.from_numpy(c)).numpy()
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    rp = Projection(D_G, axes=(None, "embed"), use_bias=True).apply(
        {"params": jax.tree_util.tree_map(jnp.asarray, p["sgm"]["rel_proj"])}, jnp.asarray(p["sgm"]["rel_semantic"]))
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(rp), ref.sgm.rel_proj(ref.sgm.rel_semantic.weight).numpy(), atol=1e-5)
    states = rng.standard_normal((3, 6, D_G)).astype(np.float32)
    mask = np.asarray([[1, 1, 1, 0, 0, 0], [1] * 6, [0] * 6], bool)
    tok = MemoryTokenizer(cfg).apply({"params": jax.tree_util.tree_map(jnp.asarray, p["tokenizer"])},
                                          jnp.asarray(states), jnp.asarray(mask))
    got = Projection(D_LLM, axes=(None, "embed"), use_bias=True).apply(
        {"params": jax.tree_util.tree_map(jnp.asarray, p["proj"])}, tok)
    with torch.no_grad():
        want = ref.memory(torch.from_numpy(states), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_bad_files(tmp_path, ref):
    sd = dict(ref.state_dict())
    sd["sgm.extra.weight"] = torch.zeros(2)
    with pytest.raises(GmemError, match="unexpected keys.*sgm.extra"):
        C.graph_encoder_params({k: v.numpy() for k, v in sd.items()})
    with pytest.raises(GmemError, match="not found"):
        C.read_state_dict(str(tmp_path / "nope.pth"))
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(GmemError, match="not a readable"):
        C.read_state_dict(str(tmp_path / "bad.pth"))
    with pytest.raises(GmemError, match="unexpected memory_attn key"):
        C.memory_params({"model.layers.1.memory_attn.x_proj.weight": np.zeros((2, 2))})


def test_import_into_system(tmp_path, ref):
    import pathlib

    from gmem import config as gconfig
    from gmem.systems.gmt import GMTSystem
    configs = pathlib.Path(__file__).resolve().parents[3] / "configs"
    kgd = tmp_path / "kg"
    kgd.mkdir()
    rows = [(f"e{h}", f"r{r}", f"e{t}") for h, r, t in np.random.default_rng(0).integers(0, 6, (30, 3)) % [6, 2, 6]]
    for n in ("train", "valid", "test"):
        (kgd / f"{n}.txt").write_text("".join("\t".join(x) + "\n" for x in rows[:20 if n == "train" else 25]))
    over = [f"system.kg={kgd}", "system.max_train=8", "data.seq_len=300"]
    system = GMTSystem(gconfig.to_object(gconfig.load_config(configs / "gmt_tiny.yaml", over)))
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(0))
    cfg = system.gcfg
    d, rank = system.model_config.hidden_size, 4
    hd = system.model_config.head_size
    kvd = system.model_config.num_key_value_heads * hd
    g = np.random.default_rng(1)
    enc_sd = {"sgm.rel_semantic.weight": g.standard_normal((cfg.num_edge_relations, cfg.rel_dim))}
    for i in range(cfg.sgm_layers):
        p = f"sgm.layers.{i}."
        dg = cfg.graph_dim
        enc_sd.update({p + "attn.in_proj_weight": g.standard_normal((3 * dg, dg)), p + "attn.in_proj_bias": g.standard_normal(3 * dg),
                       p + "attn.out_proj.weight": g.standard_normal((dg, dg)), p + "attn.out_proj.bias": g.standard_normal(dg),
                       p + "norm1.weight": g.standard_normal(dg), p + "norm1.bias": g.standard_normal(dg),
                       p + "norm2.weight": g.standard_normal(dg), p + "norm2.bias": g.standard_normal(dg),
                       p + "linear1.weight": g.standard_normal((4 * dg, dg)), p + "linear1.bias": g.standard_normal(4 * dg),
                       p + "linear2.weight": g.standard_normal((dg, 4 * dg)), p + "linear2.bias": g.standard_normal(dg)})
    dg = cfg.graph_dim
    enc_sd.update({"tokenizer.memory_queries": g.standard_normal((cfg.num_memory_tokens, dg)),
                   "tokenizer.attn.in_proj_weight": g.standard_normal((3 * dg, dg)), "tokenizer.attn.in_proj_bias": g.standard_normal(3 * dg),
                   "tokenizer.attn.out_proj.weight": g.standard_normal((dg, dg)), "tokenizer.attn.out_proj.bias": g.standard_normal(dg),
                   "proj.weight": g.standard_normal((d, dg)), "proj.bias": g.standard_normal(d)})
    mem_sd = {}
    for i in system.memory_layers:
        p = f"model.layers.{i}."
        for n, out_dim in (("q_proj", d), ("k_proj", kvd), ("v_proj", kvd), ("o_proj", d)):
            in_dim = d
            mem_sd[p + f"memory_attn.{n}.weight"] = g.standard_normal((out_dim, in_dim))
            mem_sd[p + f"memory_attn.{n}.lora_A.weight"] = g.standard_normal((rank, in_dim))
            mem_sd[p + f"memory_attn.{n}.lora_B.weight"] = g.standard_normal((out_dim, rank))
        mem_sd[p + "memory_gate"] = np.asarray([0.5])
        mem_sd[p + "memory_layernorm.weight"] = g.standard_normal(d)
    folder = tmp_path / "gmt_out"
    folder.mkdir()
    torch.save({k: torch.tensor(v, dtype=torch.float16) for k, v in enc_sd.items()}, folder / "graph_encoder.pth")
    torch.save({k: torch.tensor(v, dtype=torch.float16) for k, v in mem_sd.items()}, folder / "memory_attn.pth")
    (folder / "gmt_config.json").write_text(json.dumps({"memory_layers": ",".join(map(str, system.memory_layers)),
                                                        "lora_r": rank}))
    ck = C.load_gmt_checkpoint(str(folder))
    t, f = C.apply_to_system(ck, system, trainable, frozen)
    i = system.memory_layers[0]
    f16 = lambda a: np.asarray(torch.tensor(a, dtype=torch.float16).float())
    blk = f["llm"]["model"][f"layers_{i}"]["memory_attn"]
    np.testing.assert_array_equal(np.asarray(blk["k_proj"]["kernel"]), f16(mem_sd[f"model.layers.{i}.memory_attn.k_proj.weight"]).T)
    lora = t["lora"]["memory"]["model"][f"layers_{i}"]["memory_attn"]["q_proj"]
    np.testing.assert_array_equal(np.asarray(lora["lora_A"]), f16(mem_sd[f"model.layers.{i}.memory_attn.q_proj.lora_A.weight"]).T)
    assert float(t["mem"][f"layers_{i}"]["memory_gate"]) == 0.5
    np.testing.assert_array_equal(np.asarray(t["enc"]["proj"]["kernel"]), f16(enc_sd["proj.weight"]).T)
    assert not np.allclose(np.asarray(f["table"]), np.asarray(frozen["table"]))     # rebuilt from the new SGM
    b = {k: jnp.asarray(v) for k, v in system.batch(0).items()}
    l0 = float(system.loss(trainable, frozen, b, jax.random.PRNGKey(0))[0])
    l1 = float(system.loss(t, f, b, jax.random.PRNGKey(0))[0])
    assert np.isfinite(l1) and l1 != l0
    (folder / "gmt_config.json").write_text(json.dumps({"memory_layers": "0"}))
    with pytest.raises(GmemError, match="memory_layers"):
        C.load_gmt_checkpoint(str(folder))
