#!/usr/bin/env bash
# Slurm TaskProlog: record every task of every job as a run, with no change to job scripts.
#
#   slurm.conf:  TaskProlog=/opt/ml-profiler/deploy/slurm/task-prolog.sh
#                Epilog=/opt/ml-profiler/deploy/slurm/epilog.sh
#
# slurmstepd runs this as the job's user in each task's environment, from the task's own
# process just before it becomes the user's program (same pid), so `profiler attach` records
# that pid and everything it starts. Lines printed as `export NAME=value` go into the task's
# environment: PROFILER_RUN_ID makes hooks inside the script report to the same run (one run per
# job step whether or not the script has hooks). The run's metadata is the job's id, name, user,
# account and partition; its project is the account. Its end is the task's end (status
# `finished`: a prolog cannot learn the exit code; hooks in the script, or the profile-task
# wrapper, report failures).
#
# PROFILER_HOME: the node daemon's home (default /var/lib/ml-profiler). Its socket must admit the
# job users: set `socket_group` in the daemon's profiler.toml to a group they share. Without a
# daemon there, `profiler attach` starts one for the user (PROFILER_AUTOSTART=0 forbids that).
# ML_PROFILER: the profiler command (default /opt/ml-profiler/bin/profiler).
# A failure here never stops the task (Slurm ignores a TaskProlog's exit status; this exits 0).
profiler=${ML_PROFILER:-/opt/ml-profiler/bin/profiler}
export PROFILER_HOME=${PROFILER_HOME:-/var/lib/ml-profiler}
task_pid=${SLURM_TASK_PID:-$PPID}
run_id="slurm-${SLURM_JOB_ID:?}${SLURM_STEP_ID:+.${SLURM_STEP_ID}}"
echo "export PROFILER_HOME=$PROFILER_HOME"
echo "export PROFILER_RUN_ID=$run_id"
name=${SLURM_JOB_NAME:-slurm-$SLURM_JOB_ID}
if ! error=$("$profiler" attach "$task_pid" --run-id "$run_id" --name "$name" --no-wait \
        2>&1 >/dev/null); then
    echo "print profiler: task $task_pid is not recorded: ${error##*error: }"
fi
exit 0
