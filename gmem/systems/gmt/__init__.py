"""GMT (Graph-as-Memory Tuning), specs/gofa-gmt.md part B, as two systems:

  gmt_stage1  stage1.GMTStage1System: pretraining the semantic graph module (SGM) on the KG
  gmt         stage2.GMTSystem: instruction tuning with the KG neighbourhood as memory

options: their typed options; kg_base: the KG both read; graph: the SGM, memory tokenizer and
projection as GMT runs them; data: KGs, records, prompts, batches; eval: classification and link
prediction; checkpoint: the original's output folders; shared_prefix: the shared-prompt speed-up.
"""

from gmem.systems.gmt.options import GMTOptions, GMTStage1Options
from gmem.systems.gmt.stage1 import GMTStage1System
from gmem.systems.gmt.stage2 import GMTSystem

__all__ = ["GMTOptions", "GMTStage1Options", "GMTStage1System", "GMTSystem"]
