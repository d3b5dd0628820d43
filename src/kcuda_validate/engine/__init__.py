"""The CUDA engine: a llama-cpp-python build made for this machine's GPUs by `kcuda-validate setup`.

`toolkit` finds or installs a CUDA toolkit, `plan` decides what to build from the hardware (pure),
`build` compiles the wheel, `install` caches it and swaps it into the environment only once verified,
`setup` runs those steps and turns their results into checks.
"""
