"""Every default that the CLI's options and the services' option dataclasses share, written once.

It imports nothing, so the click decorators can read it while `--help` stays fast, and a service called
from Python gets the same defaults as the command line."""

# detect (and validate-all's detect stage)
MIN_VRAM_GB = 2.0
MIN_COMPUTE = 6.1

# load
GPU_LAYERS = -1  # all
N_CTX = 4096
STAGE_TIMEOUT_S = 600.0  # each worker stage (load, inference)

# model source
SYNTHETIC_TYPE = "Q8_0"

# infer
MAX_TOKENS = 128
TEMPERATURE = 0.0  # greedy
SEED = 42
REPEAT = 3  # measured runs after one warm-up
SAMPLING = "auto"  # greedy sampling in the decode graph on a GPU run (as llama-server does), on the CPU otherwise

# health --timeout's upper bound: an hour is no node health probe (and setitimer overflows past it).
HEALTH_MAX_TIMEOUT_S = 3600.0

# llama.cpp's own limit on CPU threads (GGML_MAX_N_THREADS in ggml.h): more crashed the worker (SIGSEGV).
MAX_THREADS = 512
