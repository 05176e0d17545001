"""The plain causal-LM system (`system.name: lm`): gmem.systems.lm.system."""

from gmem.systems.lm.system import LMOptions, LMSystem, json_safe, random_config

__all__ = ["LMOptions", "LMSystem", "json_safe", "random_config"]
