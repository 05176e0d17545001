"""VardaGPT (`system.name: varda`): a decoder whose every input token searches an associative
memory. model: the memory layers and the segment loop; system: the gmem.train system;
generate: generation with the memory; eval: the perplexity table and the long-context probe
(`python infer.py --checkpoint RUN` with system.report)."""

from gmem.systems.varda.model import VardaConfig, VardaHeads, VardaModel
from gmem.systems.varda.system import VardaOptions, VardaSystem

__all__ = ["VardaConfig", "VardaHeads", "VardaModel", "VardaOptions", "VardaSystem"]
