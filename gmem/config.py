"""Typed run configs: YAML files that extend each other, plus command-line overrides.

A config is an OmegaConf structured config over the dataclasses below, so unknown keys and
wrong types are caught with the key's full path. Layers merge in order:

  schema defaults <- configs/X.yaml (after the files it `extends:`) <- --override F.yaml ... <- key.sub=value

Every problem is a one-line GmemError naming the file (and line for YAML syntax) and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pathlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gmem.config_checks import MOVED, check_dtypes, check_list_index, check_old_form
from gmem.errors import GmemError
from gmem.yaml_files import file_layers, locate_in_file

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


@dataclass
class ModelConfig:
    """Which base model. source: 'random' (tiny config from the fields below), an embedded asset
    name ('smollm2'), a local HF folder, or a .gguf file. dtype is the compute dtype; parameters
    stay float32 (master weights)."""

    source: str = "random"
    dtype: str = "float32"
    # Storage dtype of the frozen base weights (never trained, so no fp32 master copy is needed;
    # bfloat16 halves their memory). Trainable params are always float32.
    frozen_dtype: str = "float32"
    remat: bool = False
    seed: int = 0
    # Only for source=random (tests, benchmarks); a real source brings its own config.json.
    # family: llama | gpt2 | bert (None: the system's default family).
    family: Optional[str] = None
    vocab_size: int = 260
    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: Optional[bool] = None    # None: the family's default (LLaMA no, GPT-2 yes)


@dataclass
class AdapterConfig:
    """One adapter set (see gmem.adapters.AdapterSpec)."""

    kind: str = "lora"
    name: str = "default"
    targets: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # LoRA: scale alpha/sqrt(r) instead of alpha/r. Both kinds: only these layer indices (None = all).
    use_rslora: bool = False
    layers_to_transform: Optional[List[int]] = None
    # GIFT only: one (phi, psi) pair for all targets; activation on W phi; biases of phi / psi.
    share_projections: bool = False
    gift_act: str = "identity"
    in_projection_bias: bool = False
    out_projection_bias: bool = False


@dataclass
class DataConfig:
    """Batching every system shares. batch_size is global (all hosts, all micro-batches of one
    optimizer step); seq_len is the padded row length of token batches; seed orders the rows.
    What the data is (a corpus, a KG, a labelled set) is the system's own option."""

    seq_len: int = 128
    batch_size: int = 8
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW with warmup then cosine/linear/constant decay to lr * end_lr_ratio."""

    lr: float = 1e-3
    warmup_steps: int = 10
    # Warmup starts at lr * warmup_start_ratio (torch's LinearLR start_factor; 0 = from zero).
    warmup_start_ratio: float = 0.0
    schedule: str = "cosine"
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: Optional[float] = 1.0
    # Parameters whose path contains one of these names are left out of the global-norm clip.
    clip_exclude: List[str] = field(default_factory=list)
    grad_accum: int = 1
    # Parameters whose path contains one of these names (or that are 1-D) get no weight decay.
    no_decay: List[str] = field(default_factory=lambda: ["bias", "norm", "scale"])
    # ... except these: a path containing one of them is decayed whatever its rank (scalar
    # step sizes that torch's AdamW decays along with everything else, e.g. ReGrad's alpha).
    decay: List[str] = field(default_factory=list)


@dataclass
class MeshConfig:
    """Device mesh shape; -1 on one axis takes the devices left over. `devices: N` builds the
    mesh on the first N devices only (null: all), e.g. 1 for a notebook on an 8-device host."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    devices: Optional[int] = None


@dataclass
class ShardingConfig:
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Extra or replacement logical-axis rules, e.g. {length: data}; None/[] = replicated.
    rules: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    """dir: '' means RUN_DIR/checkpoints. keep_best > 0 also keeps the best by `best_metric`."""

    dir: str = ""
    every: int = 100
    keep: int = 2
    keep_best: int = 0
    best_metric: str = "eval/loss"
    best_mode: str = "min"
    async_save: bool = True


@dataclass
class EvalConfig:
    """Periodic evaluation during training: every N steps (0 = only infer.py), over up to
    `batches` batches of held-out data (how a system counts a batch is its own)."""

    every: int = 0
    batches: int = 4


@dataclass
class TrainConfig:
    steps: int = 100
    seed: int = 0
    log_every: int = 1
    run_dir: str = "runs/default"
    resume: bool = True
    progress: bool = True
    # Continue from a checkpoint (resume or infer.py) although the base weights loaded now differ
    # from the ones it was trained on (the checkpoint records them); off: such a start is refused.
    allow_base_change: bool = False


@dataclass
class SystemOptions:
    """The `system:` section: `name` picks a registered system, whose options dataclass (a
    subclass of this one, registered with `register_system`) types every other key. Only the
    chosen system's options appear in a resolved config."""

    name: str = "lm"


# name -> system class; filled by @register_system in the gmem.systems packages.
SYSTEMS: Dict[str, type] = {}


def register_system(name: str):
    """Class decorator for a system (`gmem.train.system.System`): registers it under `name`.
    The class's `Options` attribute (a SystemOptions subclass whose `name` defaults to `name`)
    is the schema of its `system:` section."""
    def deco(cls):
        opts = getattr(cls, "Options", None)
        if opts is None or not issubclass(opts, SystemOptions):
            raise TypeError(f"system {name!r}: {cls.__name__}.Options must subclass SystemOptions")
        if opts.__dataclass_fields__["name"].default != name:
            raise TypeError(f"system {name!r}: {opts.__name__}.name must default to {name!r}")
        if name in SYSTEMS and SYSTEMS[name] is not cls:
            raise TypeError(f"system {name!r} registered twice ({SYSTEMS[name].__name__}, {cls.__name__})")
        cls.name = name
        SYSTEMS[name] = cls
        return cls
    return deco


def system_class(name: str) -> type:
    """The system registered as `name`. Systems register when their package is imported; the
    package gmem.systems.<name> is tried first, then every package under gmem/systems/ (one
    package may hold several systems, as gmt holds gmt and gmt_stage1). The imports are by
    name, at run time: gmem.train and this module never import a system statically."""
    if name not in SYSTEMS:
        try:
            importlib.import_module(f"gmem.systems.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"gmem.systems.{name}":
                raise
    if name not in SYSTEMS:
        for mod in pkgutil.iter_modules(importlib.import_module("gmem.systems").__path__):
            importlib.import_module(f"gmem.systems.{mod.name}")
    if name not in SYSTEMS:
        near = difflib.get_close_matches(name, sorted(SYSTEMS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise GmemError(f"system.name: unknown system {name!r}{hint} (known: {sorted(SYSTEMS)})")
    return SYSTEMS[name]


@dataclass
class Config:
    system: SystemOptions = field(default_factory=SystemOptions)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapters: List[AdapterConfig] = field(default_factory=lambda: [AdapterConfig()])
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _one_line(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{key}: {msg}" if key else msg


def _merge(cfg, layer: Any, where: str):
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        at, path = locate_in_file(where, key, getattr(e, "value", None))
        msg = _one_line(e)
        if path and key and path != key and msg.startswith(f"{key}: "):
            msg = f"{path}: " + msg[len(key) + 2:]
        raise GmemError(f"{at}: {msg}") from None


def _system_name(layers: list) -> str:
    """The system the layers select: the last `system.name` given (schema default 'lm')."""
    name = SystemOptions.name
    for kind, where, data in layers:
        if kind == "dict":
            sysd = data.get("system")
            if isinstance(sysd, dict) and sysd.get("name") is not None:
                name = str(sysd["name"])
        elif data[0] == "system.name":
            name = str(_parse_value(data[1]))
    return name


def _parse_value(raw: str):
    # As OmegaConf's dotlist parses values (YAML scalars and lists).
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]


def load_config(path: str | pathlib.Path | None = None, overrides: Sequence[str] = (),
                override_files: Sequence[str | pathlib.Path] = (), base: dict | None = None):
    """Build the resolved config (an OmegaConf DictConfig over `Config`, its `system` section
    typed by the chosen system's options). `base` (a saved config dict, e.g. from a
    checkpoint) is merged first, before the file."""
    layers: list = []
    if base is not None:
        layers.append(("dict", "saved config", base))
    for f in ([path] if path is not None else []) + list(override_files):
        layers += [("dict", name, data) for name, data in file_layers(pathlib.Path(f))]
    for item in overrides:
        if "=" not in item:
            raise GmemError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        if key.startswith("system.params.") or key in MOVED:
            new = MOVED.get(key, "system." + key[len("system.params."):])
            raise GmemError(f"override {item!r}: {key} is now {new}")
        layers.append(("override", f"override {item!r}", (key, raw, item)))
    for kind, where, data in layers:
        if kind == "dict":
            check_old_form(where, data)
    options = system_class(_system_name(layers)).Options
    cfg = OmegaConf.structured(Config(system=options()))
    for kind, where, data in layers:
        if kind == "dict":
            cfg = _merge(cfg, data, where)
            continue
        key, raw, item = data
        check_list_index(cfg, item, key)
        try:
            # Set by path so list indices (adapters.0.rank=4) and struct checks both work.
            OmegaConf.update(cfg, key, _parse_value(raw), merge=True)
        except OmegaConfBaseException as e:
            raise GmemError(f"{where}: {_one_line(e)}") from None
        except (yaml.YAMLError, TypeError, ValueError, IndexError) as e:
            raise GmemError(f"{where}: bad value for {key}: {str(e).splitlines()[0]}") from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise GmemError(f"config: {_one_line(e)}") from None
    check_dtypes(cfg)
    return cfg


def to_object(cfg) -> Config:
    """The typed dataclass view of a resolved config."""
    return OmegaConf.to_object(cfg)


def to_yaml(cfg) -> str:
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg) -> dict:
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def from_dict(d: dict) -> Config:
    """Rebuild a typed config from a saved dict (checkpoint metadata)."""
    return to_object(load_config(None, base=d))


def parse_cli(argv: Sequence[str]) -> tuple[Optional[str], list[str], list[str], list[str]]:
    """Split argv into (--config path, --override files, key=value overrides, the rest)."""
    path, files, pairs, rest = None, [], [], []
    it = iter(argv)
    for a in it:
        if a in ("--config", "-c", "--override"):
            try:
                v = next(it)
            except StopIteration:
                raise GmemError(f"{a}: expected a file name after it") from None
            if a == "--override":
                files.append(v)
            else:
                path = v
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a.startswith("--override="):
            files.append(a.split("=", 1)[1])
        elif "=" in a and not a.startswith("-"):
            pairs.append(a)
        else:
            rest.append(a)
    return path, files, pairs, rest
