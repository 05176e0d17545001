"""GMT against the original code: tongruiliu/GMT's own modules, not a formula.

    GMEM_ORIGINAL_GMT=/path/to/GMT python -m pytest tests/parity/test_gmt_original.py -q -ra -s

GMEM_ORIGINAL_GMT is a checkout of the original repository (its root, which holds gmt_model.py
and graph_data.py). Its code is imported from there at test time and never copied into gmem.
Without the variable the module is skipped, and -ra prints why. The original needs torch and
transformers; its decoder layer calls self-attention with the legacy LLaMA signature
(position_ids, past_key_value, ...), which transformers 5 no longer has, so each layer's
self-attention is wrapped (`_LegacyAttention`) to compute the rotary embedding from the
position ids and return (out, weights, None). Nothing else of the original is changed.

Cases, on tiny configs with the same weights (every weight moved off its init, gates and LoRA B
non-zero), mask_query on and off, with and without inverse relations:
- SemanticGraphModule.forward (edge states) and encode_entity (stage 1) against gmem's query
  edges, SGM and entity states, the weights read from its state dict as sgm_state.pth holds it;
- GraphMemoryTokenizer / GraphMemoryEncoder against gmem's tokenizer and graph memory;
- GMTForCausalLM (MemoryAugmentedLlamaDecoderLayer in two layers of a tiny MHA LLaMA) saved by
  its own save_gmt, in fp32 and in fp16, imported into a gmem GMT system with
  system.import_ckpt (the settings read from gmt_config.json by gmem): logits per prompt.
Tolerance 1e-4 absolute on fp32 values of scale 0.1-5; the worst case is printed (README).
"""

import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.environ.get("GMEM_ORIGINAL_GMT")
if not ROOT:
    pytest.skip("GMEM_ORIGINAL_GMT is not set: point it at a checkout of the original GMT repository "
                "(tongruiliu/GMT) to compare gmem with its SemanticGraphModule, GraphMemoryTokenizer/"
                "Encoder and MemoryAugmentedLlamaDecoderLayer", allow_module_level=True)
if not os.path.isfile(os.path.join(ROOT, "gmt_model.py")):
    raise RuntimeError(f"GMEM_ORIGINAL_GMT={ROOT}: no gmt_model.py under it; give the repository root")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, ROOT)
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1] / "systems" / "gmt"))
from gmt_reference import perturb as _perturb  # noqa: E402  (every weight off its init)
from gmt_model import (GMTForCausalLM, GraphMemoryEncoder, GraphMemoryTokenizer,  # noqa: E402
                       SemanticGraphModule)
from graph_data import load_kg_index, load_relation_semantics  # noqa: E402

from gmem import config as gconfig  # noqa: E402
from gmem.systems.gmt import GMTSystem  # noqa: E402
from gmem.systems.gmt import checkpoint as C  # noqa: E402
from gmem.systems.gmt import graph as G  # noqa: E402

pytestmark = pytest.mark.original
TOL = 1e-4
ERRORS = {}      # case -> max abs error, printed at the end (README's table)
CONFIGS = pathlib.Path(__file__).resolve().parents[1].parent / "configs"
N_ENT, N_REL = 12, 4
D_G, HEADS, TOP_K, M = 16, 2, 3, 4


def _record(case, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.abs(want).max() > 0.1, f"{case}: values too small to compare ({np.abs(want).max():.2e})"
    err = float(np.abs(got - want).max())
    ERRORS[case] = max(err, ERRORS.get(case, 0.0))
    assert err <= TOL, f"{case}: max abs error {err:.2e}"


@pytest.fixture(scope="module")
def kg_dir(tmp_path_factory):
    """An OpenKE folder both read (entity2id, relation2id, train2id in h t r order, test2id)."""
    d = tmp_path_factory.mktemp("kg")
    rng = np.random.default_rng(0)
    trip = sorted({(int(h), int(r), int(t)) for h, r, t in zip(rng.integers(0, N_ENT - 1, 60),
                                                               rng.integers(0, N_REL, 60), rng.integers(0, N_ENT - 1, 60))})
    train, test = trip[:-6], trip[-6:]              # entity N_ENT - 1 stays isolated
    (d / "entity2id.txt").write_text(f"{N_ENT}\n" + "".join(f"ent_{i}\t{i}\n" for i in range(N_ENT)))
    (d / "relation2id.txt").write_text(f"{N_REL}\n" + "".join(f"rel_{i}\t{i}\n" for i in range(N_REL)))
    for name, rows in (("train2id.txt", train), ("test2id.txt", test)):
        (d / name).write_text(f"{len(rows)}\n" + "".join(f"{h} {t} {r}\n" for h, r, t in rows))
    return d, np.asarray(train), np.asarray(test)


def _queries(train, test):
    return np.concatenate([train[:4], test[:3], [[N_ENT - 1, 0, N_ENT - 1]]]).astype(np.int64)


def _sgm(kg_dir, add_inverse, rel_dim=10, seed=0):
    index = load_kg_index(str(kg_dir), add_inverse=add_inverse)
    torch.manual_seed(seed)
    rel = load_relation_semantics(index.base_num_relations, rel_semantic_dim=rel_dim, add_inverse=add_inverse)
    return index, rel


def _gmem_index(kg_dir, add_inverse):
    from gmem.graph.kg import NeighbourIndex, load_openke
    kg = load_openke(str(kg_dir), add_inverse=add_inverse)
    return kg, NeighbourIndex.build(kg)


def _cfg(kg, **kw):
    return G.GraphMemoryConfig(num_edge_relations=kg.num_edge_relations, rel_dim=10, graph_dim=D_G, sgm_layers=2,
                               sgm_heads=HEADS, top_k=TOP_K, dropout=0.0, num_memory_tokens=M, memory_heads=HEADS,
                               llm_dim=24, **kw)


@pytest.mark.parametrize("add_inverse", [False, True])
@pytest.mark.parametrize("mask_query", [False, True])
def test_semantic_graph_module(kg_dir, add_inverse, mask_query):
    d, train, test = kg_dir
    index, rel = _sgm(d, add_inverse)
    sgm = _perturb(SemanticGraphModule(index, rel, D_G, 2, HEADS, TOP_K, 0.1), 0.3).eval()
    q = _queries(train, test)
    with torch.no_grad():
        states, mask = sgm(torch.as_tensor(q), mask_query=mask_query)
        z = sgm.encode_entity(torch.arange(N_ENT))
    kg, idx = _gmem_index(d, add_inverse)
    p = jax.tree.map(jnp.asarray, C.sgm_params({k: v.numpy() for k, v in sgm.state_dict().items()}, "", "sgm", set()))
    cfg, hist = _cfg(kg), jnp.asarray(idx.relation_histogram(np.arange(N_ENT)))
    e = G.query_edges(idx, q, mask_query)
    got = np.asarray(G.sgm_states(cfg, p, hist, jnp.asarray(e["edge_rel"]), jnp.asarray(e["edge_nbr"])))
    for i in range(len(q)):
        assert int(e["edge_mask"][i].sum()) == int(mask[i].sum())
        if mask[i].any():
            _record("SGM edge states", got[i][e["edge_mask"][i]], states[i][mask[i].bool()].numpy())
    zc = {k: jnp.asarray(v) for k, v in G.stage1_constants(idx).items()}
    _record("SGM encode_entity", G.entity_states(cfg, p, hist, zc), z.numpy())


def test_graph_memory_tokenizer(kg_dir):
    tok = _perturb(GraphMemoryTokenizer(M, D_G, HEADS), 0.3).eval()
    rng = np.random.default_rng(1)
    s = rng.standard_normal((3, 5, D_G)).astype(np.float32)
    mask = np.asarray([[1, 1, 1, 0, 0], [1] * 5, [0] * 5], np.float32)
    with torch.no_grad():
        want = tok(torch.as_tensor(s), torch.as_tensor(mask)).numpy()
    sd = {"tokenizer." + k: v.numpy() for k, v in tok.state_dict().items()}
    mha, _ = C._mha(sd, "tokenizer.", "tokenizer")
    p = jax.tree.map(jnp.asarray, dict(mha, memory_queries=sd["tokenizer.memory_queries"]))
    kg, _ = _gmem_index(kg_dir[0], False)
    got = G.MemoryTokenizer(_cfg(kg)).apply({"params": p}, jnp.asarray(s), jnp.asarray(mask.astype(bool)))
    _record("GraphMemoryTokenizer", got, want)


@pytest.mark.parametrize("add_inverse", [False, True])
@pytest.mark.parametrize("mask_query", [False, True])
def test_graph_memory_encoder(kg_dir, add_inverse, mask_query):
    d, train, test = kg_dir
    index, rel = _sgm(d, add_inverse)
    enc = _perturb(GraphMemoryEncoder(index, rel, D_G, 2, HEADS, TOP_K, M, HEADS, 24, 0.1, False), 0.3).eval()
    q = _queries(train, test)
    with torch.no_grad():
        want = enc(torch.as_tensor(q), mask_query=mask_query).numpy()
    kg, idx = _gmem_index(d, add_inverse)
    p = jax.tree.map(jnp.asarray, C.graph_encoder_params({k: v.numpy() for k, v in enc.state_dict().items()}))
    cfg, hist = _cfg(kg), jnp.asarray(idx.relation_histogram(np.arange(N_ENT)))
    e = {k: jnp.asarray(v) for k, v in G.query_edges(idx, q, mask_query).items()}
    _record("GraphMemoryEncoder (SGM path)", G.graph_memory(cfg, p, e, hist), want)
    _record("GraphMemoryEncoder (edge table)", G.graph_memory(cfg, p, e, table=G.edge_table(cfg, p["sgm"], hist)), want)


class _LegacyAttention(torch.nn.Module):
    """transformers 5's LlamaAttention behind the legacy call the original makes."""

    def __init__(self, attn, rotary):
        super().__init__()
        self.attn, self.rotary = attn, rotary

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.attn, name)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False):
        pe = self.rotary(hidden_states, position_ids)
        out, weights = self.attn(hidden_states, position_embeddings=pe, attention_mask=attention_mask)
        return out, weights, None


def _gmem_system(kg_dir, *over):
    o = [f"system.kg={kg_dir}", "system.rel_semantics=random", "model.num_key_value_heads=4",
         "data.seq_len=300", "system.max_train=4", *over]
    return GMTSystem(gconfig.to_object(gconfig.load_config(CONFIGS / "gmt_tiny.yaml", o)))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("train_graph_module", [False, True])
def test_gmt_for_causal_lm_saved_by_save_gmt(kg_dir, tmp_path, dtype, train_graph_module):
    """The original model on a tiny LLaMA (MHA), saved by its save_gmt, read by gmem's import."""
    from gmem.hf.writer import save_pretrained
    d, train, test = kg_dir
    probe = _gmem_system(d)
    strip = lambda t: {k: strip(v) for k, v in t.items() if k != "memory_attn"} if isinstance(t, dict) else t
    hf_dir = save_pretrained(tmp_path / "hf", probe.model_config, strip(probe.load_base()["llm"]))
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    args = {"graph_dim": D_G, "sgm_layers": 2, "sgm_heads": HEADS, "top_k": TOP_K, "num_memory_tokens": M,
            "memory_heads": HEADS, "graph_dropout": 0.1, "mask_query": True, "add_inverse": True,
            "lora_r": 4, "lora_alpha": 16.0, "lora_dropout": 0.0, "train_graph_module": train_graph_module,
            "triple_file": "train2id.txt", "triple_format": "htr", "train_on_inputs": True, "add_eos_token": False,
            "rel_semantic_dim": 10, "memory_layers": "0,1", "memory_layers_1based": False}
    index, rel = _sgm(d, True)
    enc = GraphMemoryEncoder(index, rel, D_G, 2, HEADS, TOP_K, M, HEADS, hf.config.hidden_size, 0.1, False)
    model = GMTForCausalLM(hf, enc, [0, 1], 4, 16.0, 0.0, False)
    for layer in model.model.layers:
        layer.self_attn = _LegacyAttention(layer.self_attn, hf.model.rotary_emb)
    with torch.no_grad():
        _perturb(model.graph_encoder, 0.3, 1)
        for n, p in model.named_parameters():
            if "lora_B" in n or "memory_gate" in n or "memory_layernorm" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    model.eval()
    out = tmp_path / "gmt_out"
    model.save_gmt(str(out), dict(args))
    if dtype == "float16":        # the original's usual save dtype (fp16 model): what it reads back
        for f in ("graph_encoder.pth", "memory_attn.pth"):
            sd = {k: v.half() for k, v in torch.load(out / f, weights_only=True).items()}
            torch.save(sd, out / f)
            (model.graph_encoder if f.startswith("graph") else model).load_state_dict(
                {k: v.float() for k, v in sd.items()}, strict=f.startswith("graph"))
    s = _gmem_system(d, f"system.import_ckpt={out}", "adapters.0.alpha=128.0", "adapters.0.rank=64",
                     "adapters.0.dropout=0.01")   # gmem's defaults: the original's values are taken
    assert (s.p.mask_query, s.p.top_k, s.specs[0].rank, s.specs[0].alpha) == (True, TOP_K, 4, 16.0)
    f = s.load_base()
    t = s.init_trainable(f, jax.random.PRNGKey(0))
    variables = s.variables(t, f)
    for rec in s.records("test")[:4]:
        b = {k: jnp.asarray(v) for k, v in s.encode([rec]).items()}
        real = np.asarray(b["attention_mask"][0]).astype(bool)
        got, _ = s.module.apply(variables, b["input_ids"], b["attention_mask"], hook_inputs={"memory": s.memory(t, f, b)})
        ids = torch.as_tensor(np.asarray(b["input_ids"])[:, real]).long()
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                         embedding_ids=torch.as_tensor([rec["embedding_ids"]]), mask_query=True).logits
        _record(f"GMTForCausalLM logits ({dtype} files)", np.asarray(got)[0, real], want[0].numpy())


def test_report_max_errors():
    print("\nmax abs error against the original GMT code:")
    for k, v in sorted(ERRORS.items()):
        print(f"{k}: {v:.2e}")
    assert not ERRORS or max(ERRORS.values()) <= TOL
    if ERRORS:
        (pathlib.Path(os.environ.get("GMEM_PARITY_OUT", "/tmp")) / "gmt_original_errors.json").write_text(
            json.dumps(ERRORS, indent=2))
