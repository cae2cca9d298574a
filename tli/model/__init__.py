"""Model loading (any HF causal LM, GGUF, 4-bit), LoRA adapters, pooled word embeddings."""
