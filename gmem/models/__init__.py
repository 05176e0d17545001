"""Model families: a frozen config dataclass plus linen modules each, module names as in HF."""
