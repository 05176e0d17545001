"""GIFT (Generative Interpretable Fine-Tuning): its sequence-classification system
(`system.name: gift`, gmem.systems.gift.seqcls) and its classification uses, original-checkpoint
loading and cluster maps (gmem.systems.gift.uses)."""

from gmem.systems.gift.seqcls import GiftOptions, GiftSeqClsSystem

__all__ = ["GiftOptions", "GiftSeqClsSystem"]
