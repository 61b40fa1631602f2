#!/usr/bin/env bash
# Runs model_search.main on this machine: one process, or N cooperating processes.
#
# Usage:
#   launch/local.sh [--dry-run] [-n|--num-processes N] [--port P] [--python PY]
#                   [--log-dir DIR] -- --config=CONFIG_FILE[:ARG] --workdir=DIR [MAIN_FLAGS...]
#
# Everything after `--` is passed verbatim to `python -m model_search.main`; it must contain
# --config= and --workdir=. Run from the repository root (config paths are relative to the
# current directory) with the package installed (`pip install -e .`).
#
#   N = 1 (default): runs `PY -m model_search.main ARGS` in the foreground; the process uses
#     every local device (all GPUs / TPU chips of this machine).
#   N > 1: starts N background processes, each with
#       --config.distributed.initialize=True
#       --config.distributed.coordinator_address=localhost:P
#       --config.distributed.num_processes=N --config.distributed.process_id=I
#     appended, logs process I to DIR/process_I.log (default DIR: WORKDIR/logs), waits for all
#     and exits 1 naming the failed processes and their logs. Ctrl-C / SIGTERM stops them all.
#     This is meant for testing multi-host code paths on one machine, so JAX_PLATFORMS=cpu is
#     set for the processes unless JAX_PLATFORMS is already set in the environment (set it,
#     e.g. JAX_PLATFORMS=cuda, to override; the processes then share the local accelerators).
#
# Options:
#   --dry-run             Print each command (prefixed with "+ ") and run nothing.
#   -n, --num-processes   Number of processes (default 1).
#   --port                Coordinator port on localhost for N > 1 (default 12355).
#   --python              Python interpreter to run (default: python).
#   --log-dir             Where the per-process logs go for N > 1 (default: WORKDIR/logs;
#                         required when WORKDIR is not a local path, e.g. gs://).
#   -h, --help            Show this help.
#
# Examples:
#   # One process, all local devices:
#   launch/local.sh -- --config=configs/mini.py --workdir=/tmp/mini
#   # Two CPU processes talking through localhost:12355 (each takes half of the grid):
#   launch/local.sh --num-processes 2 -- --config=configs/mini.py --workdir=/tmp/mini2
#   # Show the commands only:
#   launch/local.sh --dry-run -n 2 --port 23456 -- --config=configs/mini.py --workdir=/tmp/mini2

set -euo pipefail

readonly PROG=${0##*/}

usage() {
  cat <<USAGE
Usage: $PROG [--dry-run] [-n|--num-processes N] [--port P] [--python PY] [--log-dir DIR]
             -- --config=CONFIG_FILE[:ARG] --workdir=DIR [MAIN_FLAGS...]

Runs python -m model_search.main with the arguments after '--' on this machine.
With N > 1, starts N processes coordinated through localhost:P (JAX_PLATFORMS=cpu unless
already set) and logs process I to DIR/process_I.log (default DIR: WORKDIR/logs).

Options:
  --dry-run               print the commands (prefixed with "+ ") and run nothing
  -n, --num-processes N   number of processes (default 1)
  --port P                coordinator port for N > 1 (default 12355)
  --python PY             Python interpreter (default python)
  --log-dir DIR           per-process log directory for N > 1 (default WORKDIR/logs)
  -h, --help              show this help

Examples:
  launch/local.sh -- --config=configs/mini.py --workdir=/tmp/mini
  launch/local.sh --num-processes 2 -- --config=configs/mini.py --workdir=/tmp/mini2
USAGE
}

LAUNCH_DIR=${BASH_SOURCE[0]%/*}  # No dirname: the scripts need only bash builtins.
[[ $LAUNCH_DIR == "${BASH_SOURCE[0]}" ]] && LAUNCH_DIR=.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LAUNCH_DIR/common.sh"

dry_run=0
num_processes=1
port=12355
python=python
log_dir=""
saw_separator=0
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    -n | --num-processes) need_value "$@"; num_processes=$2; shift ;;
    --num-processes=*) num_processes=${1#*=} ;;
    --port) need_value "$@"; port=$2; shift ;;
    --port=*) port=${1#*=} ;;
    --python) need_value "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --log-dir) need_value "$@"; log_dir=$2; shift ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --) shift; saw_separator=1; break ;;
    *) bad_argument "$1" ;;
  esac
  shift
done
require_separator "$saw_separator"
main_args=("$@")

if [[ ! $num_processes =~ ^[1-9][0-9]*$ ]]; then
  usage_error "--num-processes must be a positive integer, got '$num_processes'"
fi
if [[ ! $port =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
  usage_error "--port must be an integer in 1..65535, got '$port'"
fi
if [[ -z $python ]]; then
  usage_error "--python must not be empty"
fi
check_main_args "${main_args[@]}"

if ((num_processes == 1)); then
  cmd=("$python" -m model_search.main "${main_args[@]}")
  show "$(quote_words "${cmd[@]}")"
  if ((dry_run)); then
    exit 0
  fi
  exec "${cmd[@]}"
fi

if [[ -z $log_dir ]]; then
  if [[ $WORKDIR == *://* ]]; then
    usage_error "--workdir=$WORKDIR is not a local directory; pass --log-dir DIR for the process logs"
  fi
  log_dir=$WORKDIR/logs
fi

if [[ -z ${JAX_PLATFORMS+set} ]]; then
  show "export JAX_PLATFORMS=cpu"
  export JAX_PLATFORMS=cpu
fi
run mkdir -p "$log_dir"

pids=()

# Stops all started processes, then exits with 128 + the signal number.
# shellcheck disable=SC2329  # Invoked by the traps below.
on_signal() {
  local signal=$1 code=$2
  printf '%s: got SIG%s; stopping %d process(es)\n' "$PROG" "$signal" "${#pids[@]}" >&2
  if ((${#pids[@]} > 0)); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
  fi
  wait || true
  exit "$code"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

for ((i = 0; i < num_processes; i++)); do
  cmd=("$python" -m model_search.main "${main_args[@]}"
       --config.distributed.initialize=True
       "--config.distributed.coordinator_address=localhost:$port"
       "--config.distributed.num_processes=$num_processes"
       "--config.distributed.process_id=$i")
  log=$log_dir/process_$i.log
  show "$(quote_words "${cmd[@]}") > $(quote_words "$log") 2>&1 &"
  if ((!dry_run)); then
    "${cmd[@]}" >"$log" 2>&1 &
    pids+=("$!")
  fi
done
show "wait"
if ((dry_run)); then
  exit 0
fi

printf '%s: started %d processes (pids %s); logs in %s\n' \
  "$PROG" "$num_processes" "${pids[*]}" "$log_dir" >&2
failed=()
for ((i = 0; i < num_processes; i++)); do
  if wait "${pids[i]}"; then
    :
  else
    failed+=("$i:$?")
  fi
done

if ((${#failed[@]} == 0)); then
  printf '%s: all %d processes finished successfully; logs in %s\n' \
    "$PROG" "$num_processes" "$log_dir" >&2
  exit 0
fi
ids=()
for entry in "${failed[@]}"; do
  ids+=("${entry%%:*}")
done
printf '%s: error: %d of %d processes failed (process id(s): %s):\n' \
  "$PROG" "${#failed[@]}" "$num_processes" "${ids[*]}" >&2
for entry in "${failed[@]}"; do
  i=${entry%%:*}
  log=$log_dir/process_$i.log
  printf '  process %s exited with status %s; log: %s\n' "$i" "${entry#*:}" "$log" >&2
  if [[ -s $log ]]; then
    tail -n 5 -- "$log" | while IFS= read -r line; do printf '    | %s\n' "$line"; done >&2
  fi
done
exit 1
