"""ReGrad (Retrievable Gradients): passages become parameter updates (spec gift-varda-regrad §3).

Modules: options (typed `system:` section), prompt (the original's prompt in the base model's
chat template, task rows), meta (inner step, outer loss: the second-order meta-objective),
system (the `regrad` System: training, evaluation, the `bank` pass, inference), bank (the
gradient bank on disk), answer and modes (generation with per-question theta', the five
inference modes), data (corpus, retriever, augmented files, batches), and the data side: qa
(the original's augmented format), raw (2Wiki/HotpotQA/PopQA/CWQ loaders), wiki_qa and fanout
(the embedded QA sets), augment (retrieval augmentation), metrics (EM/F1 as §3.8).
"""

from gmem.systems.regrad.options import AlphaMode, RegradOptions
from gmem.systems.regrad.system import RegradSystem

__all__ = ["AlphaMode", "RegradOptions", "RegradSystem"]
