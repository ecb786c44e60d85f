"""The steps of a Self-Lengthen macro-iteration, one module per step."""
