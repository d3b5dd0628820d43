#!/usr/bin/env bash
# One line that stops a setup script when GPU inference does not work, and says why (exit code table:
# `kcuda-validate exit-codes`).
set -euo pipefail
./run kcuda-validate validate-all -q || { rc=$?; echo "GPU inference not ready (exit $rc); run: kcuda-validate detect" >&2; exit "$rc"; }
