"""Adapters (LoRA, GIFT) on a frozen base tree, in activation form.

Public API (stable; gmem.train and gmem.systems build on it):

    from gmem.adapters import (AdapterSpec, init_adapters, adapter_collection, merge, unmerge,
                               count_params)

    spec = AdapterSpec(kind="lora", targets=("q_proj", "v_proj"), rank=8, alpha=16.0,
                       dropout=0.0, use_rslora=False, layers_to_transform=None, name="default")
    trainable = init_adapters([spec], base_params, rng)        # {spec.name: small tree}
    def loss_fn(trainable):                                    # jax.grad over `trainable` only
        variables = {"params": base_params,
                     "adapter": adapter_collection([spec], trainable, base_params)}
        logits, _ = model.apply(variables, ids, rngs={"dropout": key})  # rng only if dropout>0
        ...
    merged = merge([spec], base_params, trainable)             # fold into kernels
    base_again = unmerge([spec], merged, trainable)
    n = count_params(trainable)

Signatures:
  AdapterSpec(kind, targets, rank, alpha, dropout, use_rslora, layers_to_transform, name,
              share_projections, gift_act, in_projection_bias, out_projection_bias, block_type)
      frozen dataclass; lists are turned into tuples; bad fields raise GmemError.
  init_adapters(specs, base_params, rng, rules=None) -> {name: tree}
      specs: one AdapterSpec or a sequence. A target matching nothing raises GmemError listing
      the module names present. rules: the family's HF key map (optional; exact HF names).
  adapter_collection(specs, trainable, base_params=None, rules=None) -> the "adapter" collection
      trainable: init_adapters' {name: tree} (or, for one spec, its bare tree). GIFT needs
      base_params to broadcast its shared (phi, psi) to every targeted module. Call it inside
      the loss function so gradients flow into the shared pairs.
  merge / unmerge(specs, params, trainable, rules=None) -> params with adapters folded in / out
  count_params(tree) -> int

Several named sets on one base: init them together (distinct names) and pass a different
subset per call, e.g. adapter_collection([enc_spec], trainable) for the encoder pass and
adapter_collection([dec_spec], trainable) for the decoder pass. One LoRA and one GIFT may sit
on the same module in one call; two LoRAs on one module in one call raise GmemError.

Trainable tree layouts: LoRA mirrors module paths ({"model": {"layers_0": {"self_attn":
{"q_proj": {"lora_A": [D_in, r], "lora_B": [r, D_out]}}}}}); GIFT is {target: {"phi":
[D_in, r], "psi": [r, D_in], "phi_bias"?: [r], "psi_bias"?: [D_in]}}.

Interop: gmem.adapters.peft_io (save_peft / load_peft: PEFT's adapter_config.json +
adapter_model.safetensors), gmem.adapters.gift_io (from_gift_state_dict / load_gift_checkpoint /
to_gift_state_dict: the original GIFT checkpoint layout; read_gift_file /
gift_spec_from_checkpoint: the settings the original stores with its checkpoints).
"""

from gmem.adapters.core import (AdapterSpec, adapter_collection, count_params, init_adapters,
                                merge, module_entries, placements, specs_from_config, unmerge)
from gmem.adapters.targets import resolve_targets

__all__ = ["AdapterSpec", "init_adapters", "adapter_collection", "merge", "unmerge",
           "count_params", "module_entries", "placements", "resolve_targets", "specs_from_config"]
