"""The generation chain shared by every backend: KV cache, sampling, codes, decode."""
