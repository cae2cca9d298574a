"""tli: Targeted Lexical Injection -- scan, train and evaluate cross-lingual word alignment in causal LMs."""

__version__ = "0.1.0"
