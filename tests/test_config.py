"""Config loading: YAML files that extend each other, overrides, and one-line errors."""

import pytest

from gmem.config import (DEFAULT_CONFIG, CONFIG_DIR, Config, from_dict, load_config, parse_cli,
                         to_dict, to_object)
from gmem.errors import GmemError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_configs_load():
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = to_object(load_config(p))
        assert isinstance(cfg, Config)
    assert to_object(load_config(DEFAULT_CONFIG)).system.name  # what a bare train.py runs
    d = to_object(load_config(CONFIG_DIR / "lm_lora_quick.yaml"))
    assert d.model.source == "smollm2" and d.system.corpus == "shakespeare"
    assert d.train.run_dir == "runs/lm_lora_quick" and d.train.steps == 40
    assert d.adapters[0].targets == ["q_proj", "k_proj", "v_proj", "o_proj"]  # from lm_lora.yaml


def test_extends_chain_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "train:\n  steps: 5\n  seed: 3\noptim:\n  lr: 0.5\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain:\n  steps: 7\n")
    over = write(tmp_path, "over.yaml", "optim:\n  lr: 0.25\n")
    cfg = to_object(load_config(child, ["sharding.mesh.fsdp=4", "adapters.0.rank=2",
                                        "system.prompts=[a, b]", "system.max_chars=null"], [over]))
    assert (cfg.train.steps, cfg.train.seed, cfg.optim.lr) == (7, 3, 0.25)
    assert cfg.sharding.mesh.fsdp == 4 and cfg.adapters[0].rank == 2
    assert cfg.system.prompts == ["a", "b"] and cfg.system.max_chars is None
    assert from_dict(to_dict(cfg)) == cfg  # what a checkpoint saves rebuilds the same config


@pytest.mark.parametrize("text,overrides,message", [
    ("model:\n  hidden_sze: 3\n", [], r"model\.hidden_sze: Key 'hidden_sze' not in 'ModelConfig'"),
    ("train:\n  steps: abc\n", [], r"train\.steps: Value 'abc' of type 'str' could not be converted to Integer"),
    ("optim:\n  grad_accum: 1.5\n", [], r"optim\.grad_accum: Value '1\.5' of type 'float' could not be converted"),
    ("", ["sharding.mesh.fsdq=2"], r"override 'sharding\.mesh\.fsdq=2': sharding\.mesh\.fsdq: Key 'fsdq' not in 'MeshConfig'"),
    ("", ["optim.lr=fast"], r"optim\.lr: Value 'fast' of type 'str' could not be converted to Float"),
    ("", ["train.steps"], r"override 'train\.steps': expected key\.sub=value"),
    ("bogus: 1\n", [], r"bogus: Key 'bogus' not in 'Config'"),
])
def test_errors_name_the_key(tmp_path, text, overrides, message):
    p = write(tmp_path, "c.yaml", text)
    with pytest.raises(GmemError, match=message) as e:
        load_config(p, overrides)
    assert "\n" not in str(e.value)
    if text:
        assert str(p) in str(e.value) or overrides


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(GmemError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path, "bad.yaml", "train:\n  steps: 3\n   seed: [\n")
    with pytest.raises(GmemError, match=r"bad\.yaml:3: bad YAML: mapping values are not allowed here"):
        load_config(bad)
    lst = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(GmemError, match="must be a mapping of sections, got list"):
        load_config(lst)
    ext = write(tmp_path, "ext.yaml", "extends: missing.yaml\n")
    with pytest.raises(GmemError, match=r"ext\.yaml: extends: file 'missing\.yaml' not found"):
        load_config(ext)
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(GmemError, match="`extends` makes a cycle"):
        load_config(tmp_path / "a.yaml")


def test_parse_cli():
    path, files, pairs, rest = parse_cli(["--config", "x.yaml", "a.b=1", "--override", "o.yaml",
                                          "--override=p.yaml", "--weird"])
    assert (path, files, pairs, rest) == ("x.yaml", ["o.yaml", "p.yaml"], ["a.b=1"], ["--weird"])
    with pytest.raises(GmemError, match="--config: expected a file name after it"):
        parse_cli(["--config"])


def test_system_options_are_typed_per_system(tmp_path):
    """`system:` is the chosen system's own dataclass: its keys checked with the full path, a
    close key suggested, the file named; sections the system does not read are absent."""
    cfg = to_object(load_config(CONFIG_DIR / "gmt_tiny.yaml", ["system.top_k=4"]))
    assert type(cfg.system).__name__ == "GMTOptions" and cfg.system.top_k == 4
    assert cfg.system.mode.value == "gmt" and cfg.system.kg == "nations"
    printed = to_dict(cfg)
    assert "corpus" not in printed["system"] and "prompts" not in printed["system"]
    assert set(printed["data"]) == {"seq_len", "batch_size", "seed"}
    assert set(printed["eval"]) == {"every", "batches"}
    lm = to_object(load_config(CONFIG_DIR / "tiny_lm.yaml"))
    assert type(lm.system).__name__ == "LMOptions" and lm.system.prompts == ["HAMLET:"]
    bad = write(tmp_path, "bad.yaml", "extends: " + str(CONFIG_DIR / "gmt_tiny.yaml") + "\nsystem:\n  top_kk: 3\n")
    with pytest.raises(GmemError, match=r"bad\.yaml:3: system\.top_kk: Key 'top_kk' not in 'GMTOptions'\. "
                                        r"Did you mean: 'top_k'\?") as e:
        load_config(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(GmemError, match=r"system\.mode: Invalid value 'graph'"):
        load_config(CONFIG_DIR / "gmt_tiny.yaml", ["system.mode=graph"])
    with pytest.raises(GmemError, match=r"system\.max_train: Value 'abc' of type 'str' could not be converted"):
        load_config(CONFIG_DIR / "gmt_tiny.yaml", ["system.max_train=abc"])
    with pytest.raises(GmemError, match=r"system\.name: unknown system 'gtm'; did you mean 'gmt'\?"):
        load_config(CONFIG_DIR / "gmt_tiny.yaml", ["system.name=gtm"])
    # A system's stage is a system of its own (stage 1 has no LLM options at all).
    s1 = to_dict(to_object(load_config(CONFIG_DIR / "gmt_stage1.yaml")))["system"]
    assert s1["name"] == "gmt_stage1" and "mode" not in s1 and "num_negatives" in s1


def test_old_form_configs_say_what_the_new_key_is(tmp_path):
    old = write(tmp_path, "old.yaml", "system:\n  name: gmt\n  params:\n    top_k: 8\n")
    with pytest.raises(GmemError, match=r"old\.yaml: system\.params is gone: .*system\.params\.top_k -> system\.top_k"):
        load_config(old)
    with pytest.raises(GmemError, match=r"override 'system\.params\.max_eval=3': system\.params\.max_eval is now system\.max_eval"):
        load_config(CONFIG_DIR / "gmt_tiny.yaml", ["system.params.max_eval=3"])
    moved = write(tmp_path, "moved.yaml", "data:\n  corpus: shakespeare\n")
    with pytest.raises(GmemError, match=r"moved\.yaml: data\.corpus is now system\.corpus"):
        load_config(moved)
    with pytest.raises(GmemError, match=r"eval\.prompts is now system\.prompts"):
        load_config(CONFIG_DIR / "tiny_lm.yaml", ["eval.prompts=[a]"])
