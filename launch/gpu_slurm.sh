#!/usr/bin/env bash
# Runs model_search.main on GPU hosts under SLURM: one process per host, all its GPUs.
#
# Usage:
#   launch/gpu_slurm.sh [--dry-run] [--nodes N] [--gpus-per-node G] [--partition P]
#                       [--time TIME] [--account A] [--cpus-per-task C] [--python PY]
#                       -- --config=CONFIG_FILE[:ARG] --workdir=DIR [MAIN_FLAGS...]
#
# Runs, from the current directory (run it from the repository root):
#   srun --nodes=N --ntasks-per-node=1 --gpus-per-node=G [--partition=P] [--time=TIME]
#        [--account=A] [--cpus-per-task=C] PY -m model_search.main ARGS
#        --config.distributed.initialize=True
# JAX's SLURM cluster detection finds the coordinator, the number of processes and each
# process id from the SLURM environment, so no coordinator flags are passed.
# Everything after `--` is passed verbatim to model_search.main; it must contain --config= and
# --workdir=. The workdir must be on a file system that all nodes share (or gs://), and the
# package must be installed (`pip install -e .`) in an environment all nodes can see.
#
# Works both outside an allocation (srun allocates N nodes and waits for them) and inside
# one made by salloc or sbatch (srun then runs a job step in it; N must fit the allocation).
# To queue the run as a batch job, wrap it in sbatch with the same node / GPU counts:
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --time=04:00:00 \
#     --job-name=model_search --output=slurm-%j.log --wrap \
#     "launch/gpu_slurm.sh --nodes 2 -- --config=configs/mini.py --workdir=/shared/runs/mini"
# or put the launch/gpu_slurm.sh line in a batch script after matching #SBATCH lines.
#
# Options:
#   --dry-run            Print the srun command (prefixed with "+ ") and run nothing.
#   --nodes N            Number of hosts, one process each (default 1).
#   --gpus-per-node G    GPUs per host (default 8).
#   --partition P        SLURM partition.
#   --time TIME          Time limit, e.g. 04:00:00 or 1-00:00:00.
#   --account A          SLURM account to charge.
#   --cpus-per-task C    CPUs for each process (the data pipeline uses them).
#   --python PY          Python interpreter on the nodes (default python).
#   -h, --help           Show this help.
#
# Examples:
#   # 2 hosts x 8 GPUs, 4 hours, on partition gpu:
#   launch/gpu_slurm.sh --nodes 2 --partition gpu --time 04:00:00 -- \
#     --config=configs/mini.py --workdir=/shared/runs/mini
#   # Print the srun command only:
#   launch/gpu_slurm.sh --dry-run --nodes 2 -- --config=configs/mini.py --workdir=/shared/runs/mini

set -euo pipefail

readonly PROG=${0##*/}

usage() {
  cat <<USAGE
Usage: $PROG [--dry-run] [--nodes N] [--gpus-per-node G] [--partition P] [--time TIME]
             [--account A] [--cpus-per-task C] [--python PY]
             -- --config=CONFIG_FILE[:ARG] --workdir=DIR [MAIN_FLAGS...]

Runs python -m model_search.main with the arguments after '--' under srun, one process per
host (--ntasks-per-node=1), with --config.distributed.initialize=True. Works inside an
allocation (salloc / sbatch) and outside one.

Options:
  --dry-run            print the srun command (prefixed with "+ ") and run nothing
  --nodes N            number of hosts, one process each (default 1)
  --gpus-per-node G    GPUs per host (default 8)
  --partition P        SLURM partition
  --time TIME          time limit, e.g. 04:00:00 or 1-00:00:00
  --account A          SLURM account to charge
  --cpus-per-task C    CPUs for each process
  --python PY          Python interpreter on the nodes (default python)
  -h, --help           show this help

Examples:
  launch/gpu_slurm.sh --nodes 2 --partition gpu --time 04:00:00 -- \\
    --config=configs/mini.py --workdir=/shared/runs/mini
  sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --time=04:00:00 --wrap \\
    "launch/gpu_slurm.sh --nodes 2 -- --config=configs/mini.py --workdir=/shared/runs/mini"
USAGE
}

LAUNCH_DIR=${BASH_SOURCE[0]%/*}  # No dirname: the scripts need only bash builtins.
[[ $LAUNCH_DIR == "${BASH_SOURCE[0]}" ]] && LAUNCH_DIR=.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LAUNCH_DIR/common.sh"

# Fails unless the value $2 of option $1 is a positive integer.
check_positive_int() {
  if [[ ! $2 =~ ^[1-9][0-9]*$ ]]; then
    usage_error "$1 must be a positive integer, got '$2'"
  fi
}

dry_run=0
nodes=1
gpus_per_node=8
partition=""
time_limit=""
account=""
cpus_per_task=""
python=python
saw_separator=0
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --nodes) need_value "$@"; nodes=$2; shift ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node) need_value "$@"; gpus_per_node=$2; shift ;;
    --gpus-per-node=*) gpus_per_node=${1#*=} ;;
    --partition) need_value "$@"; partition=$2; shift ;;
    --partition=*) partition=${1#*=} ;;
    --time) need_value "$@"; time_limit=$2; shift ;;
    --time=*) time_limit=${1#*=} ;;
    --account) need_value "$@"; account=$2; shift ;;
    --account=*) account=${1#*=} ;;
    --cpus-per-task) need_value "$@"; cpus_per_task=$2; shift ;;
    --cpus-per-task=*) cpus_per_task=${1#*=} ;;
    --python) need_value "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --) shift; saw_separator=1; break ;;
    *) bad_argument "$1" ;;
  esac
  shift
done
require_separator "$saw_separator"
main_args=("$@")

check_positive_int --nodes "$nodes"
check_positive_int --gpus-per-node "$gpus_per_node"
if [[ -n $cpus_per_task ]]; then
  check_positive_int --cpus-per-task "$cpus_per_task"
fi
# SLURM time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
if [[ -n $time_limit && ! $time_limit =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]]; then
  usage_error "--time must be a SLURM time limit such as 04:00:00 or 1-00:00:00, got '$time_limit'"
fi
if [[ -z $python ]]; then
  usage_error "--python must not be empty"
fi
check_main_args "${main_args[@]}"
if ((nodes > 1)) && [[ $WORKDIR == /tmp/* || $WORKDIR == /tmp ]]; then
  printf '%s: warning: --workdir=%s is usually node-local; with --nodes %s the hosts need a shared workdir\n' \
    "$PROG" "$WORKDIR" "$nodes" >&2
fi

cmd=(srun --nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus_per_node")
if [[ -n $partition ]]; then
  cmd+=(--partition="$partition")
fi
if [[ -n $time_limit ]]; then
  cmd+=(--time="$time_limit")
fi
if [[ -n $account ]]; then
  cmd+=(--account="$account")
fi
if [[ -n $cpus_per_task ]]; then
  cmd+=(--cpus-per-task="$cpus_per_task")
fi
cmd+=("$python" -m model_search.main "${main_args[@]}" --config.distributed.initialize=True)

if ((dry_run)); then
  printf '+ %s\n' "$(quote_words "${cmd[@]}")"
  exit 0
fi
if ! command -v srun >/dev/null; then
  printf '%s: error: srun not found on PATH; run this on a SLURM login node or inside an allocation\n' "$PROG" >&2
  exit 1
fi
if [[ -n ${SLURM_JOB_ID:-} ]]; then
  printf '%s: running as a step of SLURM job %s\n' "$PROG" "$SLURM_JOB_ID" >&2
fi
printf '+ %s\n' "$(quote_words "${cmd[@]}")" >&2
exec "${cmd[@]}"
