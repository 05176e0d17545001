"""Target matching: HF names, GIFT's 'attn:proj', regexes, all-linear, layer filters, errors."""

import numpy as np
import pytest

from gmem.adapters.targets import hf_name, layer_index, resolve_targets
from gmem.errors import GmemError
from gmem.hf.keymaps.llama import RULES


def _k(i, o):
    return {"kernel": np.zeros((i, o), np.float32)}


VIT = {"vit": {"encoder": {f"layer_{i}": {
    "attention": {"attention": {"query": _k(8, 8), "key": _k(8, 8), "value": _k(8, 8)},
                  "output": {"dense": _k(8, 8)}},
    "intermediate": {"dense": _k(8, 16)}, "output": {"dense": _k(16, 8)}} for i in range(2)}},
    "classifier": _k(8, 3)}
TIMM = {"blocks_0": {"attn": {"qkv": _k(8, 24), "proj": _k(8, 8)}, "mlp": {"fc1": _k(8, 16)}}}


def test_hf_names_from_key_map_and_convention():
    assert hf_name("model/layers_3/self_attn/q_proj", RULES) == "model.layers.3.self_attn.q_proj"
    assert hf_name("vit/encoder/layer_1/attention/output/dense") == "vit.encoder.layer.1.attention.output.dense"
    assert layer_index("model.layers.3.self_attn.q_proj") == 3


def test_llama_suffix_names(tiny_llama):
    _, params, _ = tiny_llama
    got = resolve_targets(("q_proj", "mlp.down_proj"), params)
    assert got["q_proj"] == [f"model/layers_{i}/self_attn/q_proj" for i in range(2)]
    assert got["mlp.down_proj"] == [f"model/layers_{i}/mlp/down_proj" for i in range(2)]


def test_gift_colon_notation_timm_and_hf_vit():
    assert resolve_targets(("attn:proj",), TIMM)["attn:proj"] == ["blocks_0/attn/proj"]
    # the same target on HF-named ViT modules goes through the timm -> HF alias
    got = resolve_targets(("attn:proj",), VIT)["attn:proj"]
    assert got == [f"vit/encoder/layer_{i}/attention/output/dense" for i in range(2)]
    fc2 = resolve_targets(("mlp:fc2",), VIT)["mlp:fc2"]
    assert fc2 == [f"vit/encoder/layer_{i}/output/dense" for i in range(2)]


def test_regex_all_linear_and_layers(tiny_llama):
    _, params, _ = tiny_llama
    got = resolve_targets(r".*layers\.[03]\.self_attn\.(q|k)_proj", params)
    assert sorted(next(iter(got.values()))) == ["model/layers_0/self_attn/k_proj",
                                                "model/layers_0/self_attn/q_proj"]
    got = resolve_targets(("re:.*\\.(gate|up)_proj",), params, layers_to_transform=[1])
    assert sorted(next(iter(got.values()))) == ["model/layers_1/mlp/gate_proj", "model/layers_1/mlp/up_proj"]
    lin = resolve_targets(("all-linear",), params)["all-linear"]
    assert len(lin) == 2 * 7 and "lm_head" not in lin
    assert resolve_targets(("query",), VIT, layers_to_transform=1)["query"] == [
        "vit/encoder/layer_1/attention/attention/query"]


def test_first_target_owns_a_module(tiny_llama):
    _, params, _ = tiny_llama
    got = resolve_targets(("q_proj", "all-linear"), params)
    assert not set(got["q_proj"]) & set(got["all-linear"])


def test_unmatched_target_lists_existing_names(tiny_llama):
    _, params, _ = tiny_llama
    with pytest.raises(GmemError) as e:
        resolve_targets(("q_proj", "query", "value"), params)
    msg = str(e.value)
    assert "['query', 'value']" in msg and "self_attn.q_proj" in msg and "mlp.down_proj" in msg
    with pytest.raises(GmemError, match="in layers \\[7\\]"):
        resolve_targets(("q_proj",), params, layers_to_transform=7)
