#!/usr/bin/env bash
# Slurm Epilog (root, on every node of the job, after it ends): close the job's runs that are
# still open on this node (a process that outlived the job, a daemon that missed an exit).
# Normally there are none: each run ends with its task's processes. See task-prolog.sh.
#
# PROFILER_HOME: the node daemon's home (default /var/lib/ml-profiler); ML_PROFILER: the
# profiler command (default /opt/ml-profiler/bin/profiler). Always exits 0.
profiler=${ML_PROFILER:-/opt/ml-profiler/bin/profiler}
export PROFILER_HOME=${PROFILER_HOME:-/var/lib/ml-profiler}
"$profiler" detach --meta "slurm_job_id=${SLURM_JOB_ID:?}" >/dev/null 2>&1
exit 0
