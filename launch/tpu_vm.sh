#!/usr/bin/env bash
# Runs model_search.main on every worker of a Cloud TPU VM (single host or pod slice).
#
# Usage:
#   launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE [--accelerator-type TYPE]
#                    [--version RUNTIME] [--project P] [--spot] [--repo DIR_OR_GIT_URL]
#                    [--python PY] [--skip-setup]
#                    -- --config=CONFIG_FILE[:ARG] --workdir=gs://BUCKET/DIR [MAIN_FLAGS...]
#
# Steps (each printed as "+ COMMAND" before it runs; --dry-run prints them and runs nothing):
#   1. `gcloud compute tpus tpu-vm describe NAME`; if that fails (no such TPU VM),
#      `gcloud compute tpus tpu-vm create NAME --accelerator-type=TYPE --version=RUNTIME [--spot]`.
#   2. Puts the repository on all workers as ~/BASENAME: a local directory is copied with
#      `gcloud compute tpus tpu-vm scp --recurse DIR NAME: --worker=all`; a git URL is cloned
#      (or pulled, if already there) on each worker. Then installs it on each worker with
#      `PY -m pip install -e . && PY -m pip install "jax[tpu]==$JAX_VERSION" -f <libtpu releases>`.
#   3. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd ~/BASENAME &&
#      PY -m model_search.main ARGS --config.distributed.initialize=True"`: one process per
#      worker; JAX finds the coordinator and the process ids of a TPU pod by itself.
# --skip-setup skips steps 1 and 2 (the TPU VM exists and has the code installed).
#
# Everything after `--` is passed verbatim to model_search.main; it must contain --config= and
# --workdir=. Paths in it are on the workers (a relative --config is relative to the repository).
# Use a gs:// workdir: on a pod every worker must see the same workdir, and a local path would
# split the results across the workers' disks (the script warns, and goes on, if it is not gs://).
# The pinned dependencies (JAX $JAX_VERSION) need Python >= 3.11 on the workers; if the runtime's
# python3 is older, install a newer one there and pass it with --python (e.g. --python
# ~/venv/bin/python).
# The run lasts as long as the ssh session: use tmux/screen on your side for long studies.
#
# Options:
#   --dry-run             Print each command (prefixed with "+ ") and run nothing; commands
#                         sent to the workers are also printed in full, after "# on each worker:".
#   --name NAME           TPU VM name (required).
#   --zone ZONE           Zone, e.g. us-central2-b (required).
#   --accelerator-type T  Accelerator type for create (default v4-8).
#   --version RUNTIME     TPU software version for create (default tpu-ubuntu2204-base).
#   --project P           Google Cloud project (default: gcloud's configured project).
#   --spot                Create a Spot TPU VM.
#   --repo DIR_OR_URL     Local directory to copy, or git URL to clone (default: the repository
#                         this script is in).
#   --python PY           Python interpreter on the workers (default python3).
#   --skip-setup          Skip create / copy / install; just run.
#   -h, --help            Show this help.
#
# Examples:
#   # v4-32 pod slice (4 workers), code copied from this checkout, results on GCS:
#   launch/tpu_vm.sh --name ms-v4-32 --zone us-central2-b --accelerator-type v4-32 -- \
#     --config=configs/mini.py --workdir=gs://my-bucket/model_search/mini
#   # Single-host v4-8 Spot VM, code cloned from GitHub, in project my-project:
#   launch/tpu_vm.sh --name ms-v4-8 --zone us-central2-b --spot --project my-project \
#     --repo https://github.com/me/model_search.git -- \
#     --config=configs/mini.py --workdir=gs://my-bucket/model_search/mini
#   # Print the commands only:
#   launch/tpu_vm.sh --dry-run --name ms-v4-32 --zone us-central2-b --accelerator-type v4-32 -- \
#     --config=configs/mini.py --workdir=gs://my-bucket/model_search/mini

set -euo pipefail

readonly PROG=${0##*/}
# Keep in sync with the jax pin in setup.py (tests/launch_test.py checks it).
readonly JAX_VERSION=0.10.2
readonly LIBTPU_RELEASES=https://storage.googleapis.com/jax-releases/libtpu_releases.html

usage() {
  cat <<USAGE
Usage: $PROG [--dry-run] --name NAME --zone ZONE [--accelerator-type TYPE] [--version RUNTIME]
             [--project P] [--spot] [--repo DIR_OR_GIT_URL] [--python PY] [--skip-setup]
             -- --config=CONFIG_FILE[:ARG] --workdir=gs://BUCKET/DIR [MAIN_FLAGS...]

Creates the Cloud TPU VM NAME if it does not exist, puts the repository on all its workers
(~/BASENAME), installs it with jax[tpu]==$JAX_VERSION, and runs
python -m model_search.main with the arguments after '--' on every worker, with
--config.distributed.initialize=True.

Options:
  --dry-run                print the commands (prefixed with "+ ") and run nothing
  --name NAME              TPU VM name (required)
  --zone ZONE              zone, e.g. us-central2-b (required)
  --accelerator-type TYPE  accelerator type for create (default v4-8)
  --version RUNTIME        TPU software version for create (default tpu-ubuntu2204-base)
  --project P              Google Cloud project (default: gcloud's configured project)
  --spot                   create a Spot TPU VM
  --repo DIR_OR_GIT_URL    local directory to copy or git URL to clone
                           (default: the repository this script is in)
  --python PY              Python interpreter on the workers (default python3)
  --skip-setup             skip create / copy / install; just run
  -h, --help               show this help

Example:
  launch/tpu_vm.sh --name ms-v4-32 --zone us-central2-b --accelerator-type v4-32 -- \\
    --config=configs/mini.py --workdir=gs://my-bucket/model_search/mini
USAGE
}

LAUNCH_DIR=${BASH_SOURCE[0]%/*}  # No dirname: the scripts need only bash builtins.
[[ $LAUNCH_DIR == "${BASH_SOURCE[0]}" ]] && LAUNCH_DIR=.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$LAUNCH_DIR/common.sh"

# Quotes a path for the remote shell, keeping a leading ~/ unquoted so that it expands there.
quote_remote_path() {
  local home=\~/
  if [[ $1 == "$home"* ]]; then
    printf '%s%s' "$home" "$(quote_words "${1#"$home"}")"
  else
    quote_words "$1"
  fi
}

# Runs the shell command line $1 on all workers, showing it in full.
run_on_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all --command="$1"
}

dry_run=0
name=""
zone=""
accelerator_type=v4-8
runtime_version=tpu-ubuntu2204-base
project=""
spot=0
repo=""
python=python3
skip_setup=0
saw_separator=0
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --name=*) name=${1#*=} ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator-type) need_value "$@"; accelerator_type=$2; shift ;;
    --accelerator-type=*) accelerator_type=${1#*=} ;;
    --version) need_value "$@"; runtime_version=$2; shift ;;
    --version=*) runtime_version=${1#*=} ;;
    --project) need_value "$@"; project=$2; shift ;;
    --project=*) project=${1#*=} ;;
    --spot) spot=1 ;;
    --repo) need_value "$@"; repo=$2; shift ;;
    --repo=*) repo=${1#*=} ;;
    --python) need_value "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --skip-setup) skip_setup=1 ;;
    --) shift; saw_separator=1; break ;;
    *) bad_argument "$1" ;;
  esac
  shift
done
require_separator "$saw_separator"
main_args=("$@")

if [[ -z $name ]]; then
  usage_error "missing --name NAME (the TPU VM to use or create)"
fi
if [[ -z $zone ]]; then
  usage_error "missing --zone ZONE (e.g. --zone us-central2-b)"
fi
for value in accelerator_type runtime_version python; do
  if [[ -z ${!value} ]]; then
    usage_error "--${value//_/-} must not be empty"
  fi
done

# Where the code comes from, and its directory name on the workers (~/BASENAME).
if [[ -z $repo ]]; then
  script_dir=.
  if [[ ${BASH_SOURCE[0]} == */* ]]; then
    script_dir=${BASH_SOURCE[0]%/*}
  fi
  repo=$(cd -- "$script_dir/.." && pwd)
fi
if [[ -d $repo ]]; then
  repo_is_git_url=0
  repo=$(cd -- "$repo" && pwd)
  repo_base=${repo##*/}
elif [[ $repo == *://* || $repo =~ ^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+: ]]; then
  repo_is_git_url=1
  repo_base=${repo%/}
  repo_base=${repo_base##*/}
  repo_base=${repo_base##*:}
  repo_base=${repo_base%.git}
else
  usage_error "--repo '$repo' is neither an existing directory nor a git URL (https://..., ssh://..., git@host:path)"
fi
if [[ -z $repo_base || $repo_base == . || $repo_base == .. ]]; then
  usage_error "--repo '$repo': cannot tell the repository's directory name"
fi
remote_repo=\~/$repo_base

check_main_args "${main_args[@]}"
if [[ $WORKDIR != gs://* ]]; then
  printf '%s: warning: --workdir=%s is not a gs:// path; on a multi-host TPU pod each worker would write to its own disk. Use --workdir=gs://BUCKET/DIR.\n' \
    "$PROG" "$WORKDIR" >&2
fi

if ((!dry_run)) && ! command -v gcloud >/dev/null; then
  printf '%s: error: gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)\n' "$PROG" >&2
  exit 1
fi

gcloud_flags=(--zone="$zone")
if [[ -n $project ]]; then
  gcloud_flags+=(--project="$project")
fi
cd_repo="cd $(quote_remote_path "$remote_repo")"
py=$(quote_remote_path "$python")

if ((!skip_setup)); then
  # 1. The TPU VM.
  describe=(gcloud compute tpus tpu-vm describe "$name" "${gcloud_flags[@]}")
  create=(gcloud compute tpus tpu-vm create "$name" "${gcloud_flags[@]}"
          --accelerator-type="$accelerator_type" --version="$runtime_version")
  if ((spot)); then
    create+=(--spot)
  fi
  if ((dry_run)); then
    show "$(quote_words "${describe[@]}")"
    show "# if the TPU VM does not exist:"
    show "$(quote_words "${create[@]}")"
  else
    show "$(quote_words "${describe[@]}")"
    if "${describe[@]}" >/dev/null 2>&1; then
      printf '%s: TPU VM %s exists; using it\n' "$PROG" "$name" >&2
    else
      printf '%s: TPU VM %s not found; creating it\n' "$PROG" "$name" >&2
      run "${create[@]}"
    fi
  fi

  # 2. The code, on every worker.
  install="$cd_repo && $py -m pip install -e . && $py -m pip install $(quote_words "jax[tpu]==$JAX_VERSION") -f $(quote_words "$LIBTPU_RELEASES")"
  if ((repo_is_git_url)); then
    remote_repo_q=$(quote_remote_path "$remote_repo")
    fetch="if [ -d $remote_repo_q/.git ]; then git -C $remote_repo_q pull --ff-only; else git clone $(quote_words "$repo") $remote_repo_q; fi"
    show "# on each worker: $fetch && $install"
    run_on_workers "$fetch && $install"
  else
    run gcloud compute tpus tpu-vm scp --recurse "$repo" "$name:" "${gcloud_flags[@]}" --worker=all
    show "# on each worker: $install"
    run_on_workers "$install"
  fi
fi

# 3. The study: one process per worker.
main="$cd_repo && $py -m model_search.main $(quote_words "${main_args[@]}" --config.distributed.initialize=True)"
show "# on each worker: $main"
run_on_workers "$main"
