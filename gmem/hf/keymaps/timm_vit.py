"""timm VisionTransformer <-> gmem.models.vit (ViTForImageClassification / ViTModel).

timm's names (the GIFT paper's vision backbone, vit_base_patch16_224.augreg_in21k):

    cls_token [1, 1, D], pos_embed [1, N + 1, D], patch_embed.proj (Conv2d, [D, C, ph, pw]),
    blocks.{i}.norm1, blocks.{i}.attn.qkv ([3D, D], q, k, v stacked along the rows),
    blocks.{i}.attn.proj, blocks.{i}.norm2, blocks.{i}.mlp.fc1, blocks.{i}.mlp.fc2, norm, head

The fused qkv is the one key a Rule cannot carry (one key, three gmem kernels): FUSED names it,
and gmem.hf.timm splits it into the virtual keys blocks.{i}.attn.{q,k,v}.{weight,bias} (rows
[0, D), [D, 2D), [2D, 3D)) before the rules apply, and stacks them back on export. Everything
else is a Rule, as for the HF families. The patch conv maps with "T" (numpy's full transpose)
to gmem's [pw, ph, C, D] kernel, as the HF ViT map does.

Only the plain timm ViT is served: class token, token pooling, no LayerScale (ls1/ls2), no
qk-norm, no register tokens, no pre-norm, no fc_norm. Such variants carry keys these rules do not
know, so an import reports them instead of running a different network.
"""

from gmem.hf.keymap import Rule

FUSED = (("blocks.{i}.attn.qkv", ("q", "k", "v")),)

# timm model-name prefixes -> attention heads (timm state dicts do not record the head count).
HEADS = {"vit_tiny_": 3, "vit_small_": 6, "vit_medium_": 8, "vit_base_": 12, "vit_large_": 16,
         "vit_huge_": 16, "vit_giant_": 16, "deit_tiny_": 3, "deit_small_": 6, "deit_base_": 12}


def _lin(t: str, g: str) -> tuple:
    return Rule(t + ".weight", g + "/kernel", "T"), Rule(t + ".bias", g + "/bias")


def _norm(t: str, g: str) -> tuple:
    return Rule(t + ".weight", g + "/scale"), Rule(t + ".bias", g + "/bias")


def encoder_rules(gmem_prefix: str = "") -> tuple:
    g, b, gl = gmem_prefix, "blocks.{i}", gmem_prefix + "layers_{i}"
    return (
        Rule("cls_token", g + "embeddings/cls_token"),
        Rule("pos_embed", g + "embeddings/position_embeddings"),
        *_lin("patch_embed.proj", g + "embeddings/patch_embeddings/projection"),
        *_norm(b + ".norm1", gl + "/layernorm_before"),
        *_lin(b + ".attn.q", gl + "/attention/q_proj"),     # virtual keys, split from attn.qkv
        *_lin(b + ".attn.k", gl + "/attention/k_proj"),
        *_lin(b + ".attn.v", gl + "/attention/v_proj"),
        *_lin(b + ".attn.proj", gl + "/attention/o_proj"),
        *_norm(b + ".norm2", gl + "/layernorm_after"),
        *_lin(b + ".mlp.fc1", gl + "/mlp/fc1"),
        *_lin(b + ".mlp.fc2", gl + "/mlp/fc2"),
        *_norm("norm", g + "layernorm"),
    )


TIMM_VIT_IMAGE_CLASSIFICATION = encoder_rules("vit/") + _lin("head", "classifier")
TIMM_VIT_MODEL = encoder_rules()     # num_classes=0: no head, features after the final norm
