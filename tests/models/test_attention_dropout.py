"""Attention-probability dropout in every family, without transformers: the HF config field is
read by from_hf (HF's default when absent) and written back by to_hf; with no "dropout" rng the
model is exactly the rate-0 model; with one, the output depends on the key only.
(The train-mode comparisons with transformers, on the same keep masks, are in tests/parity.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.models import bert, gpt2, llama, vit

IDS = jnp.asarray(np.random.RandomState(0).randint(1, 60, size=(2, 7)))
MASK = jnp.asarray([[1] * 7, [0, 0] + [1] * 5])

FAMILIES = {
    # name: (config class, HF dict without the field, field, HF default, other dropouts -> 0,
    #        module, inputs)
    "gpt2": (gpt2.GPT2Config, {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4},
             "attn_pdrop", 0.1, {"resid_pdrop": 0.0, "embd_pdrop": 0.0},
             gpt2.GPT2LMHeadModel, (IDS, MASK)),
    "bert": (bert.BertConfig, {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "intermediate_size": 48},
             "attention_probs_dropout_prob", 0.1, {"hidden_dropout_prob": 0.0},
             bert.BertModel, (IDS, MASK)),
    "vit": (vit.ViTConfig, {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 48, "image_size": 16, "patch_size": 4},
            "attention_probs_dropout_prob", 0.0, {"hidden_dropout_prob": 0.0},
            vit.ViTModel, (jnp.asarray(np.random.RandomState(1).randn(2, 3, 16, 16), jnp.float32),)),
    "llama": (llama.LlamaConfig, {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
                                  "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "num_key_value_heads": 2},
              "attention_dropout", 0.0, {}, llama.LlamaForCausalLM, (IDS, MASK)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_config_reads_and_writes_the_hf_field(family):
    cls, hf, field, default, _, _, _ = FAMILIES[family]
    assert getattr(cls.from_hf(hf), field) == default
    cfg = cls.from_hf(dict(hf, **{field: 0.25}))
    assert getattr(cfg, field) == 0.25 and cfg.to_hf()[field] == 0.25
    assert getattr(cls.from_hf(cfg.to_hf()), field) == 0.25
    assert getattr(cls(), field) == default  # the dataclass default is HF's too


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dropout_only_with_a_rng(family):
    cls, hf, field, _, others, module_cls, inputs = FAMILIES[family]
    drop = cls.from_hf(dict(hf, **{field: 0.5}), **others)
    off = dataclasses.replace(drop, **{field: 0.0})
    params = jax.jit(module_cls(off).init)(jax.random.PRNGKey(0), *inputs)
    first = lambda out: np.asarray(out[0])
    apply = jax.jit(lambda cfg, key: module_cls(cfg).apply(
        params, *inputs, rngs={} if key is None else {"dropout": key}), static_argnums=0)
    plain = first(apply(off, None))
    np.testing.assert_array_equal(first(apply(drop, None)), plain)   # deterministic = rate 0
    np.testing.assert_array_equal(first(apply(off, jax.random.PRNGKey(1))), plain)
    a, b, c = (first(apply(drop, jax.random.PRNGKey(k))) for k in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - plain).max() > 1e-3 and np.abs(a - c).max() > 1e-3
