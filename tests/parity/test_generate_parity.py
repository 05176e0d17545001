"""gmem generate vs transformers generate on tiny random models (greedy, left-padded batches),
and gmem's top-k / top-p filter vs HF's logits warpers.

Families: LLaMA and GPT-2. Weights go HF -> gmem through an HF folder and
gmem.hf.convert.load_pretrained, as a user's checkpoint would.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from gmem.hf.convert import load_pretrained
from gmem.models.generate import filter_logits, generate

NEW = 32
PAD = 0


def to_gmem(hf_model, folder):
    """HF torch model -> (gmem module, variables): saved as an HF folder and read back."""
    hf_model.save_pretrained(folder)
    module, _, params = load_pretrained(folder)
    return module, {"params": params}


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                  initializer_range=0.3, pad_token_id=PAD, bos_token_id=1,
                                  eos_token_id=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


def prompts(seed=0, lengths=(7, 3, 12, 1)):
    """Left-padded batch of prompts of different lengths (ids avoid pad and eos)."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = rng.integers(3, 96, n)
        mask[i, width - n:] = 1
    return ids, mask


def hf_greedy(hf_model, ids, mask, eos):
    hf_model.generation_config.eos_token_id = eos
    with torch.no_grad():
        out = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                max_new_tokens=NEW, do_sample=False, use_cache=True,
                                pad_token_id=PAD, eos_token_id=eos)
    return out[:, ids.shape[1]:].numpy()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    hf = tiny_llama() if request.param == "llama" else tiny_gpt2()
    module, variables = to_gmem(hf, tmp_path_factory.mktemp(request.param))
    return hf, module, variables


def test_greedy_matches_hf_without_eos(pair):
    """32 greedy tokens, token-identical to HF on a left-padded batch (no early stop)."""
    hf, module, variables = pair
    ids, mask = prompts()
    want = hf_greedy(hf, ids, mask, eos=None)
    got = generate(module, variables, ids, mask, max_new_tokens=NEW, eos_token_id=None,
                   pad_token_id=PAD)
    assert want.shape == (4, NEW)
    np.testing.assert_array_equal(np.asarray(got.tokens), want)
    assert not np.asarray(got.done).any()
    np.testing.assert_array_equal(np.asarray(got.lengths), NEW)


def test_greedy_stops_like_hf(pair):
    """With an EOS that some rows hit mid-way, rows stop at the same step and pad afterwards."""
    hf, module, variables = pair
    ids, mask = prompts(seed=1)
    free = hf_greedy(hf, ids, mask, eos=None)
    eos = int(free[0, 9])  # row 0 emits this token by step 9 at the latest
    unused = next(t for t in range(3, 96) if t not in free)  # a list of EOS ids, one never hit
    want = hf_greedy(hf, ids, mask, eos=[eos, unused])
    got = generate(module, variables, ids, mask, max_new_tokens=NEW, eos_token_id=[eos, unused],
                   pad_token_id=PAD)
    tokens = np.asarray(got.tokens)
    # HF returns only as many steps as the longest row needed; the rest must be padding here.
    np.testing.assert_array_equal(tokens[:, :want.shape[1]], want)
    assert (tokens[:, want.shape[1]:] == PAD).all()
    hit = (want == eos).any(1)
    np.testing.assert_array_equal(np.asarray(got.done), hit)
    first = np.where(hit, (want == eos).argmax(1) + 1, NEW)
    np.testing.assert_array_equal(np.asarray(got.lengths), first)
    assert hit[0]


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.8), (7, 0.5), (1, 1.0), (0, 0.01)])
def test_filter_matches_hf_warpers(top_k, top_p):
    """Kept token sets equal HF's TopKLogitsWarper then TopPLogitsWarper (exact set equality)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 50)).astype(np.float32) * 3
    t = torch.tensor(logits)
    if top_k:
        t = TopKLogitsWarper(top_k)(None, t)
    if top_p < 1.0:
        t = TopPLogitsWarper(top_p)(None, t)
    want = torch.isfinite(t).numpy()
    got = filter_logits(jnp.asarray(logits), top_k, top_p, use_top_k=top_k > 0,
                        use_top_p=top_p < 1.0)
    got = np.isfinite(np.asarray(got))
    np.testing.assert_array_equal(got, want)
