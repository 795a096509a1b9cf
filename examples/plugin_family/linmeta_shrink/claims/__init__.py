"""Claims of the example family (one module per claim)."""
