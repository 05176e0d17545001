"""GMT memory cross-attention on a tiny random LLaMA: zero gate = base model exactly, a non-zero
gate changes logits, KV-cache decoding equals the full forward, LoRA reaches the block."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.memory.cross_attention import (init_from_self_attention, is_trainable_memory_param,
                                         memory_hook, memory_lora_spec, top_layers)
from gmem.models.llama import LlamaConfig, LlamaForCausalLM
from tolerance import assert_trees_close_to_scale

CFG = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
LAYERS = (2, 3)
B, L, M = 2, 7, 5


@pytest.fixture(scope="module")
def setup():
    base = LlamaForCausalLM(CFG)
    mem_model = LlamaForCausalLM(CFG, hooks=(memory_hook(CFG, LAYERS),))
    ids = jax.random.randint(jax.random.key(1), (B, L), 0, CFG.vocab_size)
    memory = jax.random.normal(jax.random.key(2), (B, M, CFG.hidden_size))
    base_params = nn.unbox(jax.jit(base.init)(jax.random.key(0), ids)["params"])
    # The memory model's tree = the base tree + memory_attn blocks copied from self_attn.
    params = init_from_self_attention(base_params, LAYERS)
    assert "memory_attn" not in base_params["model"]["layers_2"]  # input not modified
    return base, mem_model, base_params, params, ids, memory


def _set_gate(params, value):
    for i in LAYERS:
        params["model"][f"layers_{i}"]["memory_attn"]["memory_gate"] = jnp.asarray(value, jnp.float32)
    return params


def test_tree_matches_module_init(setup):
    base, mem_model, _, params, ids, memory = setup
    fresh = jax.eval_shape(lambda: mem_model.init(jax.random.key(3), ids, hook_inputs={"memory": memory}))["params"]
    boxed_params = init_from_self_attention(
        jax.eval_shape(lambda: base.init(jax.random.key(0), ids))["params"], LAYERS)
    boxed = lambda t: jax.tree.map(lambda x: type(x).__name__, t,
                                   is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert boxed(fresh) == boxed(boxed_params)
    shapes = lambda t: jax.tree.map(jnp.shape, nn.unbox(t))
    assert shapes(fresh) == shapes(params)
    blk = params["model"]["layers_2"]["memory_attn"]
    sa = params["model"]["layers_2"]["self_attn"]
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        np.testing.assert_array_equal(blk[n]["kernel"], sa[n]["kernel"])
    assert float(blk["memory_gate"]) == 0.0
    assert "memory_attn" not in params["model"]["layers_1"]


def test_zero_gate_is_base_model_exactly(setup):
    base, mem_model, base_params, params, ids, memory = setup
    want, _ = base.apply({"params": base_params}, ids)
    got, _ = mem_model.apply({"params": params}, ids, hook_inputs={"memory": memory})
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # tolerance 0: exact


def test_nonzero_gate_changes_logits_and_tanh_gate(setup, tmp_path):
    """With the gate open, the logits are those of the memory-augmented layer written in torch
    (GMT's B8 on a transformers LLaMA: x + g * o(softmax(q(RMSNorm(x)) k(mem)^T / sqrt(E)) v(mem))
    after self-attention, q/k/v/o copied from it, GQA by repeated kv heads), for two gates and
    two memories; tanh(g) gives the scalar gate's logits. Logits ~1, compared at 1e-5."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from gmem.hf.writer import save_pretrained
    base, mem_model, base_params, params, ids, memory = setup
    hf = transformers.LlamaForCausalLM.from_pretrained(save_pretrained(tmp_path / "hf", CFG, base_params),
                                                       attn_implementation="eager").eval()
    want0, _ = base.apply({"params": base_params}, ids)
    for gate, mem in ((0.5, memory), (-1.3, 2.0 * memory)):
        p = _set_gate(jax.tree.map(lambda x: x, params), gate)
        got, _ = mem_model.apply({"params": p}, ids, hook_inputs={"memory": mem})
        want = _torch_memory_logits(torch, hf, np.asarray(ids), np.asarray(mem), gate)
        assert np.abs(want).max() > 0.3 and float(jnp.max(jnp.abs(got - want0))) > 1e-3
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    # tanh gate: tanh(g) instead of g, same tree.
    tanh_model = LlamaForCausalLM(CFG, hooks=(memory_hook(CFG, LAYERS, gate="tanh"),))
    p_t = _set_gate(jax.tree.map(lambda x: x, params), float(np.arctanh(0.5)))
    got_t, _ = tanh_model.apply({"params": p_t}, ids, hook_inputs={"memory": memory})
    got, _ = mem_model.apply({"params": _set_gate(jax.tree.map(lambda x: x, params), 0.5)}, ids,
                             hook_inputs={"memory": memory})
    np.testing.assert_allclose(got_t, got, atol=1e-5)
    with pytest.raises(GmemError, match="gate"):
        memory_hook(CFG, LAYERS, gate="sigmoid")


def _torch_memory_logits(torch, hf, ids, mem, gate):
    m, (b, t) = hf.model, ids.shape
    x = m.embed_tokens(torch.as_tensor(ids))
    pe = m.rotary_emb(x, torch.arange(t)[None].expand(b, -1))
    causal = torch.zeros(t, t).masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), torch.finfo(torch.float32).min)
    mem = torch.as_tensor(mem)
    h_, kv, e = CFG.num_attention_heads, CFG.num_key_value_heads, CFG.hidden_size // CFG.num_attention_heads
    with torch.no_grad():
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            h = x + a(layer.input_layernorm(x), position_embeddings=pe, attention_mask=causal[None, None])[0]
            if i in LAYERS:
                xn = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + CFG.rms_norm_eps)     # fresh RMSNorm
                q = a.q_proj(xn).view(b, t, h_, e).transpose(1, 2)
                k = a.k_proj(mem).view(b, -1, kv, e).transpose(1, 2).repeat_interleave(h_ // kv, 1)
                v = a.v_proj(mem).view(b, -1, kv, e).transpose(1, 2).repeat_interleave(h_ // kv, 1)
                w = torch.softmax(q @ k.transpose(-1, -2) / e ** 0.5, -1)
                h = h + gate * a.o_proj((w @ v).transpose(1, 2).reshape(b, t, -1))
            x = h + layer.mlp(layer.post_attention_layernorm(h))
        return hf.lm_head(m.norm(x)).numpy()


def test_kv_cache_decoding_equals_full_forward(setup):
    _, mem_model, _, params, ids, memory = setup
    p = _set_gate(jax.tree.map(lambda x: x, params), 0.7)
    full, _ = mem_model.apply({"params": p}, ids, hook_inputs={"memory": memory})
    cache = mem_model.init_cache(B, L)
    prefill = L - 3
    step = jax.jit(lambda p, x, c, mem: mem_model.apply({"params": p}, x, cache=c, hook_inputs={"memory": mem}))
    logits, cache = step(p, ids[:, :prefill], cache, memory)
    steps = [logits]
    for i in range(prefill, L):  # one token per step; the memory is passed again each time
        lg, cache = step(p, ids[:, i:i + 1], cache, memory)
        steps.append(lg)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5, rtol=1e-5)


def test_lora_on_memory_block_only(setup):
    from gmem.adapters import adapter_collection, init_adapters
    _, mem_model, _, params, ids, memory = setup
    spec = memory_lora_spec(rank=4, alpha=8.0, dropout=0.0)
    trainable = init_adapters([spec], params, jax.random.key(5))
    flat = jax.tree_util.tree_flatten_with_path(trainable)[0]
    names = {"/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat}
    assert names and all("memory_attn" in n for n in names), names
    assert len(names) == 2 * 4 * len(LAYERS)  # A and B for q/k/v/o in every memory layer
    # B = 0 at init: still the base model; a non-zero B with an open gate moves the logits.
    p = _set_gate(jax.tree.map(lambda x: x, params), 0.5)
    no_lora, _ = mem_model.apply({"params": p}, ids, hook_inputs={"memory": memory})
    coll = adapter_collection([spec], trainable, params)
    same, _ = mem_model.apply({"params": p, "adapter": coll}, ids, hook_inputs={"memory": memory})
    np.testing.assert_allclose(same, no_lora, atol=1e-6)
    bumped = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 if "lora_B" in str(path[-1]) else x, trainable)
    coll = adapter_collection([spec], bumped, params)
    moved, _ = mem_model.apply({"params": p, "adapter": coll}, ids, hook_inputs={"memory": memory})
    assert float(jnp.max(jnp.abs(moved - no_lora))) > 1e-4


def test_gradient_reaches_gate_only_at_init(setup):
    _, mem_model, _, params, ids, memory = setup

    def loss(p):
        logits, _ = mem_model.apply({"params": p}, ids, hook_inputs={"memory": memory})
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = jax.jit(jax.grad(loss))(params)
    blk = grads["model"]["layers_3"]["memory_attn"]
    assert float(jnp.abs(blk["memory_gate"])) > 0  # gate 0: only g gets a gradient (B8)
    assert float(jnp.max(jnp.abs(blk["memory_layernorm"]["scale"]))) == 0.0
    assert is_trainable_memory_param(("model", "layers_3", "memory_attn", "memory_gate"))
    assert not is_trainable_memory_param(("model", "layers_3", "memory_attn", "q_proj", "kernel"))


def test_shapes_are_checked_at_trace_time():
    """x [B, L, D] and memory [B, M, D] with the decoder's D and the same B (chex, while tracing)."""
    block = memory_hook(CFG, LAYERS).block()
    S = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    init = lambda x, m: jax.eval_shape(lambda x, m: block.init(jax.random.key(0), x, m), x, m)
    init(S(B, L, CFG.hidden_size), S(B, M, CFG.hidden_size))
    with pytest.raises(AssertionError, match="dimension"):
        init(S(B, L, CFG.hidden_size), S(B, M, CFG.hidden_size // 2))     # memory not at the LLM width
    with pytest.raises(AssertionError, match="shape"):
        init(S(B, L, CFG.hidden_size), S(B + 1, M, CFG.hidden_size))      # another batch
    with pytest.raises(AssertionError, match="rank"):
        init(S(B, L, CFG.hidden_size), S(M, CFG.hidden_size))


def test_layer_helpers_and_errors():
    assert top_layers(32) == tuple(range(24, 32))
    with pytest.raises(GmemError, match="top 9"):
        top_layers(4, 9)
    with pytest.raises(GmemError, match="layers_7"):
        init_from_self_attention({"model": {"layers_0": {}}}, (7,))


def test_generate_with_memory_equals_full_recompute(setup):
    """gmem's cached, jitted generate with the memory passed every step gives the tokens of the
    reference's inference (greedy, full forward recomputed per token, no cache)."""
    from gmem.models.generate import generate
    _, mem_model, _, params, ids, memory = setup
    p = _set_gate(jax.tree.map(lambda x: x, params), 0.7)
    out = generate(mem_model, {"params": p}, ids, max_new_tokens=4, eos_token_id=None,
                   model_kwargs={"hook_inputs": {"memory": memory}})
    fwd = jax.jit(lambda p, x: mem_model.apply({"params": p}, x, hook_inputs={"memory": memory})[0][:, -1])
    seq = ids
    for _ in range(4):
        seq = jnp.concatenate([seq, jnp.argmax(fwd(p, seq), -1)[:, None].astype(seq.dtype)], 1)
    np.testing.assert_array_equal(out.tokens, seq[:, L:])


def _block_reference(x, mem, prm, lora, cfg):
    """GMT's memory read in numpy (float64), from the formula in cross_attention's docstring:
    x + g * o(softmax(q(RMSNorm(x)) k(mem)^T / sqrt(E)) v(mem)), LoRA y += s (x A) B."""
    f = lambda t: np.asarray(t, np.float64)
    x, mem = f(x), f(mem)

    def lin(name, t):
        y = t @ f(prm[name]["kernel"])
        if name in lora:
            y = y + float(lora[name]["lora_scale"]) * (t @ f(lora[name]["lora_A"])) @ f(lora[name]["lora_B"])
        return y

    h, kvh, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
    xn = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.rms_norm_eps) * f(prm["memory_layernorm"]["scale"])
    b, l, _ = x.shape
    q = lin("q_proj", xn).reshape(b, l, h, e)
    k = np.repeat(lin("k_proj", mem).reshape(b, -1, kvh, e), h // kvh, axis=2)
    v = np.repeat(lin("v_proj", mem).reshape(b, -1, kvh, e), h // kvh, axis=2)
    s = np.einsum("blhe,bmhe->bhlm", q, k) / np.sqrt(e)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhlm,bmhe->blhe", p, v).reshape(b, l, h * e)
    return x + float(prm["memory_gate"]) * lin("o_proj", out)


class FoldedReadTest(chex.TestCase):
    """The folded read, eagerly and under jit (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_folded_read_equals_direct_and_the_formula(self):
        """With L > 2M the block folds q_proj/o_proj into the memory side (fewer flops for long
        prompts). Folded and direct paths match the float64 formula to 2e-5 (float32 rounding),
        in eval and in training (the LoRA dropout draws are the same), and give the same
        gradients: two float32 orders of one sum, so per array leaf |gf - gd| <= 1e-5 * (max|gd|
        + |gd|) (tests/tolerance.py), not a fixed atol (gradients of ~20 differ by 1.4e-5 on some
        x86 builds; seen here: <= 1.5e-6 of max|gd|), and a 1% error fails by ~500x. The scalar
        gradients (gate, LoRA scale and dropout rate: sums over all of y, with cancellation) keep
        rtol 1e-4 (seen: <= 6.6e-6)."""
        l, m = 19, 3                       # 19 > 2 * 3: the folded path
        x = jax.random.normal(jax.random.key(10), (B, l, CFG.hidden_size))
        mem = jax.random.normal(jax.random.key(11), (B, m, CFG.hidden_size))
        folded, direct = memory_hook(CFG, LAYERS).block(), memory_hook(CFG, LAYERS).block().clone(fold=False)
        prm = nn.unbox(folded.init(jax.random.key(12), x, mem)["params"])
        prm["memory_gate"] = jnp.asarray(0.6)
        prm["memory_layernorm"]["scale"] = 1.0 + 0.1 * jax.random.normal(jax.random.key(13), (CFG.hidden_size,))
        keys = iter(jax.random.split(jax.random.key(14), 16))
        lora = {}
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            din, dout = prm[n]["kernel"].shape
            lora[n] = {"lora_A": 0.3 * jax.random.normal(next(keys), (din, 4)),
                       "lora_B": 0.3 * jax.random.normal(next(keys), (4, dout)),
                       "lora_scale": jnp.asarray(2.0), "lora_dropout": jnp.asarray(0.2)}
        want = _block_reference(x, mem, prm, lora, CFG)
        for mod in (folded, direct):
            got = self.variant(lambda p, a, mod=mod: mod.apply({"params": p, "adapter": a}, x, mem))(prm, lora)
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)   # max|want| ~6: 3e-6 of it

        def loss(mod, prm, lora, rng):
            y = mod.apply({"params": prm, "adapter": lora}, x, mem, rngs={"dropout": rng})
            return jnp.sum(jnp.sin(y))

        value_and_grad = lambda mod: self.variant(jax.value_and_grad(
            lambda *a: loss(mod, *a), argnums=(0, 1)))
        rng = jax.random.key(15)
        lf, gf = value_and_grad(folded)(prm, lora, rng)
        ld, gd = value_and_grad(direct)(prm, lora, rng)
        assert abs(float(lf) - float(ld)) < 1e-4 * abs(float(ld))
        clean = loss(direct, prm, jax.tree.map(lambda t: t, {n: dict(a, lora_dropout=jnp.asarray(0.0))
                                                            for n, a in lora.items()}), rng)
        assert abs(float(clean) - float(ld)) > 1e-3      # dropout was on in both
        assert_trees_close_to_scale(gf, gd, rel=1e-5, rel_0d=1e-4)
