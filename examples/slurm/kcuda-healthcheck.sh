#!/bin/sh
# Slurm HealthCheckProgram for GPU nodes: kcuda-validate's node-health check, which drains this node itself
# when it fails (Reason="kcuda-validate: FAIL <check>: <why>"; no driver or no visible GPU is a FAIL of driver.nvml),
# or cannot tell because its checks hang (Reason="kcuda-validate: UNKNOWN: <why>"), and resumes it when it passes again, but only
# from a drain that carries that prefix: a drain an admin set is never touched.
#
# slurm.conf:
#   HealthCheckProgram=/etc/slurm/kcuda-healthcheck.sh
#   HealthCheckInterval=300
#   HealthCheckNodeState=ANY
#
# slurmd runs this as root with no arguments and no environment but SLURMD_NODENAME, hence the PATH below.
# KCUDA_VALIDATE: where the tool is installed (a venv, or the container image's /opt/kcuda-validate).
PATH=${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
export PATH
KCUDA_VALIDATE=${KCUDA_VALIDATE:-/opt/kcuda-validate/bin/kcuda-validate}
exec "$KCUDA_VALIDATE" health --slurm "$@"
