"""LlamaModel's shared-prefix path (shared_prefix / prefix_split) against the plain forward on
the same weights: logits, the filled KV cache, greedy generation and gradients of what trains
above the split (memory gate, LoRA on the memory block). Tolerance: 1e-5 absolute in fp32 (the
two paths sum the same products; only the grouping of rows differs)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.adapters import AdapterSpec, adapter_collection, init_adapters
from gmem.memory.cross_attention import init_from_self_attention, memory_hook
from gmem.models.generate import generate
from gmem.models.llama import LlamaConfig, LlamaForCausalLM

ATOL = 1e-5
P, S, B = 7, 6, 3


@pytest.fixture(scope="module")
def setup():
    c = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    kw = dict(hooks=(memory_hook(c, (2, 3)),))
    plain = LlamaForCausalLM(c, **kw)
    rng = np.random.default_rng(0)
    ids = np.zeros((B, P + S), np.int32)
    att = np.zeros((B, P + S), np.int32)
    prefix = rng.integers(1, 101, P)
    for i, n in enumerate([S, 3, 1]):              # the rest of each row is left-padded
        ids[i, :P], att[i, :P] = prefix, 1
        ids[i, P + S - n:], att[i, P + S - n:] = rng.integers(1, 101, n), 1
    mem = jnp.asarray(rng.normal(size=(B, 5, 32)), jnp.float32)
    params = plain.init(jax.random.PRNGKey(0), ids, att, hook_inputs={"memory": mem})["params"]
    params = jax.tree_util.tree_map(jnp.asarray, init_from_self_attention(
        jax.tree_util.tree_map(np.asarray, params), (2, 3)))
    for i in (2, 3):
        params["model"][f"layers_{i}"]["memory_attn"]["memory_gate"] = jnp.asarray(0.6)
    spec = AdapterSpec(kind="lora", targets=("memory_attn.q_proj", "memory_attn.v_proj"), rank=4,
                       alpha=8.0, name="m")
    lora = init_adapters([spec], params, jax.random.PRNGKey(1))
    lora = jax.tree_util.tree_map(lambda x: x + 0.05, lora)         # B != 0: the LoRA is live
    return dict(c=c, kw=kw, plain=plain, ids=ids, att=att, mem=mem, params=params, spec=spec,
                lora=lora)


def shared(s, split=2):
    return LlamaForCausalLM(s["c"], **s["kw"], shared_prefix=P, prefix_split=split)


def variables(s, params=None, lora=None):
    params = s["params"] if params is None else params
    return {"params": params,
            "adapter": adapter_collection([s["spec"]], s["lora"] if lora is None else lora, params)}


@pytest.mark.parametrize("split", [0, 2])
def test_logits_equal_plain_forward(setup, split):
    s = setup
    want, _ = s["plain"].apply(variables(s), s["ids"], s["att"], hook_inputs={"memory": s["mem"]})
    got, _ = shared(s, split).apply(variables(s), s["ids"], s["att"], hook_inputs={"memory": s["mem"]})
    real = s["att"].astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=ATOL)


def test_rows_with_another_prefix_break_the_contract(setup):
    # The path trusts the caller: a row whose prefix differs gets row 0's prefix states.
    s = setup
    ids = s["ids"].copy()
    ids[1, 0] = (ids[1, 0] + 1) % 101
    want, _ = s["plain"].apply(variables(s), ids, s["att"], hook_inputs={"memory": s["mem"]})
    got, _ = shared(s).apply(variables(s), ids, s["att"], hook_inputs={"memory": s["mem"]})
    assert np.abs(np.asarray(got - want)[1, -1]).max() > 1e-3
    np.testing.assert_allclose(np.asarray(got)[0, -1], np.asarray(want)[0, -1], atol=ATOL)


def test_prompt_pass_fills_the_cache_like_the_plain_forward(setup):
    s = setup
    cache = s["plain"].init_cache(B, P + S + 4)
    _, want = s["plain"].apply(variables(s), s["ids"], s["att"], cache=cache, hook_inputs={"memory": s["mem"]})
    _, got = shared(s).apply(variables(s), s["ids"], s["att"], cache=cache, hook_inputs={"memory": s["mem"]})
    chex.assert_trees_all_close(got.keys + got.values, want.keys + want.values, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(got.valid_BS), np.asarray(want.valid_BS))
    assert int(got.index) == int(want.index) == P + S


def test_greedy_generation_identical(setup):
    s = setup
    kw = dict(max_new_tokens=5, pad_token_id=0, model_kwargs={"hook_inputs": {"memory": s["mem"]}})
    a = generate(s["plain"], variables(s), s["ids"], s["att"], **kw)
    b = generate(shared(s), variables(s), s["ids"], s["att"], **kw)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_gradients_of_the_trained_parts_equal(setup):
    s = setup
    tgt = jnp.asarray(s["ids"][:, -1])

    def loss(module, lora, gates):
        params = dict(s["params"], model=dict(s["params"]["model"]))
        for i, g in zip((2, 3), gates):
            layer = dict(params["model"][f"layers_{i}"])
            layer["memory_attn"] = dict(layer["memory_attn"], memory_gate=g)
            params["model"][f"layers_{i}"] = layer
        logits, _ = module.apply(variables(s, params, lora), s["ids"], s["att"], hook_inputs={"memory": s["mem"]})
        return -jax.nn.log_softmax(logits[:, -2])[jnp.arange(B), tgt].sum()

    gates = (jnp.asarray(0.6), jnp.asarray(0.6))
    want = jax.grad(lambda l, g: loss(s["plain"], l, g), argnums=(0, 1))(s["lora"], gates)
    got = jax.grad(lambda l, g: loss(shared(s), l, g), argnums=(0, 1))(s["lora"], gates)
    assert any(np.abs(np.asarray(x)).max() > 1e-4 for x in jax.tree_util.tree_leaves(want))
    chex.assert_trees_all_close(got, want, atol=ATOL)
