"""kcuda-validate: prove local LLM inference works on this machine's NVIDIA GPU."""

__version__ = "0.1.0"
