"""ViTModel / ViTForImageClassification <-> gmem.models.vit.

Two spellings of the same weights: transformers v5 modules (layers.{i}.attention.q_proj,
mlp.fc1, ...) and the names its save_pretrained still writes and hub files use
(encoder.layer.{i}.attention.attention.query, intermediate.dense, ...). Both import; export
writes the file spelling (listed first), which transformers v4 and v5 both load.

The patch conv weight [D, C, ph, pw] maps with "T" (numpy's full transpose) to gmem's
[pw, ph, C, D] kernel; see gmem.models.vit.
"""

from gmem.hf.keymap import Rule


def _lin(hf: str, gm: str) -> tuple:
    return Rule(hf + ".weight", gm + "/kernel", "T"), Rule(hf + ".bias", gm + "/bias")


def _norm(hf: str, gm: str) -> tuple:
    return Rule(hf + ".weight", gm + "/scale"), Rule(hf + ".bias", gm + "/bias")


def encoder_rules(hf_prefix: str = "", gmem_prefix: str = "") -> tuple:
    h, g = hf_prefix, gmem_prefix
    file_layer, v5_layer, gl = h + "encoder.layer.{i}", h + "layers.{i}", g + "layers_{i}"
    shared = (
        Rule(h + "embeddings.cls_token", g + "embeddings/cls_token"),
        Rule(h + "embeddings.position_embeddings", g + "embeddings/position_embeddings"),
        *_lin(h + "embeddings.patch_embeddings.projection", g + "embeddings/patch_embeddings/projection"),
        *_norm(h + "layernorm", g + "layernorm"),
        *_lin(h + "pooler.dense", g + "pooler/dense"),
    )
    file_names = (
        *_lin(file_layer + ".attention.attention.query", gl + "/attention/q_proj"),
        *_lin(file_layer + ".attention.attention.key", gl + "/attention/k_proj"),
        *_lin(file_layer + ".attention.attention.value", gl + "/attention/v_proj"),
        *_lin(file_layer + ".attention.output.dense", gl + "/attention/o_proj"),
        *_lin(file_layer + ".intermediate.dense", gl + "/mlp/fc1"),
        *_lin(file_layer + ".output.dense", gl + "/mlp/fc2"),
        *_norm(file_layer + ".{n}", gl + "/{n}"),
    )
    v5_names = (
        *_lin(v5_layer + ".attention.{p}", gl + "/attention/{p}"),
        *_lin(v5_layer + ".mlp.{p}", gl + "/mlp/{p}"),
        *_norm(v5_layer + ".{n}", gl + "/{n}"),
    )
    return shared + file_names + v5_names


VIT_MODEL = encoder_rules() + encoder_rules("vit.")
VIT_IMAGE_CLASSIFICATION = encoder_rules("vit.", "vit/") + (
    Rule("classifier.weight", "classifier/kernel", "T"),
    Rule("classifier.bias", "classifier/bias"),
)

# ViTForMaskedImageModeling-style extras when such a file is loaded as ViTModel.
IGNORE = (r"(vit\.)?embeddings\.mask_token", r"decoder\..*")
