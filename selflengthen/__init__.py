"""selflengthen: long-output training data with the Self-Lengthen method."""

__version__ = "0.1.0"
