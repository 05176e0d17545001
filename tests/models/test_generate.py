"""gmem.models.generate on a tiny random LLaMA: one compilation per shape, early stop, cache vs
full recompute, sampling (top-k / top-p / temperature, seeded), errors, generate_text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.models import generate as gen
from gmem.models.generate import generate, generate_text, left_pad
from gmem.models.llama import LlamaConfig, LlamaForCausalLM

V = 48
CFG = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
TRACES = {"n": 0}
STEPS = {"n": 0}


class CountingLlama(LlamaForCausalLM):
    """The real model; counts Python traces of __call__ and (via a host callback) executions."""

    def __call__(self, *args, **kwargs):
        TRACES["n"] += 1
        jax.debug.callback(lambda: STEPS.__setitem__("n", STEPS["n"] + 1))
        return super().__call__(*args, **kwargs)


# Every test uses the same module and, where it can, the same shapes and static flags
# ([3, 5] prompts, 16 new tokens), so the jit cache is shared and the file compiles little.
NEW = 16


@pytest.fixture(scope="module")
def model():
    m = CountingLlama(CFG)
    v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
    # Scale weights up so the random model's distributions are peaked (clear argmax).
    v = jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 else x, v)
    return m, v


def batch():
    return left_pad([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], pad_token_id=0)


def test_one_compilation_per_shape(model):
    cm, v = model
    ids, mask = batch()
    before = gen._generate_jit._cache_size()
    TRACES["n"] = 0
    a = generate(cm, v, ids, mask, max_new_tokens=20, pad_token_id=0)
    # The prefill and the while-loop body are each traced once, whatever the number of tokens.
    assert TRACES["n"] == 2
    assert gen._generate_jit._cache_size() == before + 1
    b = generate(cm, v, (ids + 3) * mask, mask, max_new_tokens=20, pad_token_id=0)
    assert TRACES["n"] == 2 and gen._generate_jit._cache_size() == before + 1
    assert not np.array_equal(a.tokens, b.tokens)
    # A new max_new_tokens bucket compiles once more; then it is reused too.
    generate(cm, v, ids, mask, max_new_tokens=24, pad_token_id=0)
    generate(cm, v, ids * 0 + 4, mask, max_new_tokens=24, pad_token_id=0)
    assert TRACES["n"] == 4 and gen._generate_jit._cache_size() == before + 2
    # Sampling parameter values are traced: sweeping them does not recompile.
    for t, k, p in [(0.7, 5, 0.9), (1.3, 9, 0.5)]:
        generate(cm, v, ids, mask, max_new_tokens=20, pad_token_id=0, temperature=t, top_k=k,
                 top_p=p, rng=jax.random.PRNGKey(1))
    assert gen._generate_jit._cache_size() == before + 3


def test_stops_early_when_all_rows_done(model):
    cm, v = model
    ids, mask = batch()
    free = np.asarray(generate(cm, v, ids, mask, max_new_tokens=NEW, pad_token_id=0).tokens)
    eos = sorted({int(free[r, 2]) for r in range(3)})  # every row ends by its 3rd token
    STEPS["n"] = 0
    out = generate(cm, v, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    jax.effects_barrier()
    assert np.asarray(out.done).all()
    assert STEPS["n"] <= 1 + 2  # prefill + at most two decode steps, not NEW - 1
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for r in range(3):
        n = lengths[r]
        np.testing.assert_array_equal(tokens[r, :n], free[r, :n])
        assert tokens[r, n - 1] in eos and (tokens[r, n:] == 0).all()


def test_cached_decode_equals_full_recompute(model):
    """Greedy with the KV cache == argmax of one cache-free forward over prompt + generated
    tokens (causal: position L-1+j sees exactly the prompt and the first j generated tokens)."""
    m, v = model
    ids, mask = batch()
    out = np.asarray(generate(m, v, ids, mask, max_new_tokens=NEW, pad_token_id=0).tokens)
    seq = np.concatenate([ids, out], 1)
    msk = np.concatenate([mask, np.ones_like(out)], 1)
    logits, _ = jax.jit(m.apply)(v, seq, msk)
    want = np.asarray(jnp.argmax(logits[:, ids.shape[1] - 1:-1], -1))
    np.testing.assert_array_equal(out, want)
    assert len(set(out.ravel().tolist())) > 3  # not a degenerate constant output


def test_top_k_1_is_greedy_and_rng_reproducible(model):
    m, v = model
    ids, mask = batch()
    greedy = generate(m, v, ids, mask, max_new_tokens=NEW, pad_token_id=0).tokens
    kw = dict(max_new_tokens=NEW, pad_token_id=0, temperature=1.5)
    k1 = generate(m, v, ids, mask, top_k=1, rng=jax.random.PRNGKey(7), **kw).tokens
    np.testing.assert_array_equal(k1, greedy)
    a = generate(m, v, ids, mask, top_k=30, rng=jax.random.PRNGKey(3), **kw).tokens
    b = generate(m, v, ids, mask, top_k=30, rng=jax.random.PRNGKey(3), **kw).tokens
    c = generate(m, v, ids, mask, top_k=30, rng=jax.random.PRNGKey(4), **kw).tokens
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _first_step_probs(m, v, prompt, temperature):
    logits, _ = jax.jit(m.apply)(v, jnp.asarray([prompt]), jnp.ones((1, len(prompt)), jnp.int32))
    return np.asarray(jax.nn.softmax(logits[0, -1] / temperature))


def test_samples_stay_inside_top_k_top_p():
    """2000 first-token draws with top_k=6 then top_p=0.7 (HF order: the nucleus is taken from
    the renormalised top-6; temperature 3 flattens the distribution): every draw lies in the
    allowed set, every allowed token is drawn, and frequencies match the renormalised
    probabilities within 0.04 absolute (about 4 standard errors at n=2000)."""
    top_k, top_p = 6, 0.7
    m = LlamaForCausalLM(CFG)
    v = jax.jit(m.init)(jax.random.PRNGKey(1), jnp.ones((1, 4), jnp.int32))
    prompt, n, temp = [5, 6, 7], 2000, 3.0
    p = _first_step_probs(m, v, prompt, temp)
    order = np.argsort(-p)[:top_k]
    q = p[order] / p[order].sum()
    allowed = order[np.cumsum(q) - q < top_p]
    assert 1 < len(allowed) < top_k
    ids = np.tile(prompt, (n, 1))
    out = generate(m, v, ids, max_new_tokens=1, pad_token_id=0, temperature=temp, top_k=top_k,
                   top_p=top_p, rng=jax.random.PRNGKey(0))
    drawn = np.asarray(out.tokens)[:, 0]
    assert set(drawn.tolist()) == set(allowed.tolist())
    freq = np.bincount(drawn, minlength=V)[allowed] / n
    np.testing.assert_allclose(freq, p[allowed] / p[allowed].sum(), atol=0.04)


def test_user_errors(model):
    m, v = model
    ids, mask = batch()
    with pytest.raises(GmemError, match="left-padded"):
        generate(m, v, ids, mask[:, ::-1], max_new_tokens=4, pad_token_id=0)
    with pytest.raises(GmemError, match="top_p.*max_new_tokens|max_new_tokens.*top_p"):
        generate(m, v, ids, mask, max_new_tokens=0, pad_token_id=0, temperature=1.0, top_p=0.0)


def test_generate_text_with_a_tokenizer(model):
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(V - 3)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                           unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    m, v = model
    prompts = ["w1 w2 w3 w4", "w9"]
    texts = generate_text(m, v, tok, prompts, max_new_tokens=NEW, eos_token_id=2, pad_token_id=0,
                          pad_to_multiple_of=8)
    ids, mask = left_pad([tok.encode(p).ids for p in prompts], 0, 8)
    assert ids.shape == (2, 8)
    out = generate(m, v, ids, mask, max_new_tokens=NEW, eos_token_id=2, pad_token_id=0)
    for i, t in enumerate(texts):
        n = int(out.lengths[i])
        assert t == tok.decode(np.asarray(out.tokens)[i, :n].tolist())
        assert t and all(w.startswith("w") for w in t.split())


def test_prefill_kwargs_inputs_embeds(model):
    """Prefilling from embeddings (how GOFA-style systems feed memory tokens) == from ids."""
    m, v = model
    ids, mask = batch()
    want = generate(m, v, ids, mask, max_new_tokens=NEW, pad_token_id=0).tokens
    emb = jax.jit(lambda v, x: m.apply(v, x, method="embed"))(v, ids)
    # The ids passed alongside are dummies: only their shape may matter.
    got = generate(m, v, ids * 0, mask, max_new_tokens=NEW, pad_token_id=0,
                   prefill_kwargs={"inputs_embeds_BLD": emb}).tokens
    np.testing.assert_array_equal(got, want)
