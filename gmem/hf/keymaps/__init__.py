"""One module per family, each defining RULES: tuple[Rule, ...]."""
