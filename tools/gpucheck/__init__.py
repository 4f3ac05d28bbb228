"""The sections of tools/gpu_check.py, one job per module; the entry point stays ``tools/gpu_check.py``."""
