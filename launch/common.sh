# Helpers shared by the launchers in launch/ (sourced; not run on its own).
# The sourcing script defines PROG (its name), usage() and dry_run (0 or 1).
# shellcheck shell=bash
# dry_run is set by the sourcing script, and WORKDIR (set by check_main_args) is read by it.
# shellcheck disable=SC2154,SC2034

usage_error() {
  printf '%s: error: %s\n\n' "$PROG" "$1" >&2
  usage >&2
  exit 2
}

# Fails unless option $1 has a value ($2).
need_value() {
  if (($# < 2)) || [[ $2 == -- ]]; then
    usage_error "option $1 needs a value"
  fi
}

# The error for an argument ($1) that none of the launcher's options takes.
bad_argument() {
  if [[ $1 == -* ]]; then
    usage_error "unknown option '$1'"
  fi
  usage_error "unexpected argument '$1' (model_search.main arguments go after '--')"
}

# Fails unless the option loop stopped at '--' ($1: 1 if it did).
require_separator() {
  if (($1 == 0)); then
    usage_error "missing '--' followed by the model_search.main arguments (--config=... --workdir=...)"
  fi
}

# Prints the arguments on one line, each quoted for bash with printf %q.
quote_words() {
  local quoted
  printf -v quoted '%q ' "$@"
  printf '%s' "${quoted% }"
}

# Prints "+ LINE" (or LINE itself if it starts with "#"): to stdout with --dry-run (the
# output), else to stderr (a trace).
show() {
  local line=$1
  if [[ $line != '#'* ]]; then
    line="+ $line"
  fi
  if ((dry_run)); then
    printf '%s\n' "$line"
  else
    printf '%s\n' "$line" >&2
  fi
}

# Shows the command, then runs it unless --dry-run.
run() {
  show "$(quote_words "$@")"
  if ((!dry_run)); then
    "$@"
  fi
}

# Sets FLAG_VALUE to the value of --NAME=VALUE or --NAME VALUE in the remaining arguments
# (the last one wins, as with absl); returns 1 if there is none.
flag_value() {
  local flag=$1 status=1
  shift
  FLAG_VALUE=""
  while (($# > 0)); do
    case $1 in
      "--$flag="*) FLAG_VALUE=${1#*=}; status=0 ;;
      "--$flag") if (($# > 1)); then FLAG_VALUE=$2; status=0; shift; fi ;;
    esac
    shift
  done
  return "$status"
}

# Checks that the model_search.main arguments name a config and a workdir; sets WORKDIR.
check_main_args() {
  if (($# == 0)); then
    usage_error "missing '--' followed by the model_search.main arguments (--config=... --workdir=...)"
  fi
  if ! flag_value config "$@" || [[ -z $FLAG_VALUE ]]; then
    usage_error "missing --config=CONFIG_FILE after '--' (model_search.main needs it)"
  fi
  if ! flag_value workdir "$@" || [[ -z $FLAG_VALUE ]]; then
    usage_error "missing --workdir=DIR after '--' (model_search.main needs it)"
  fi
  WORKDIR=$FLAG_VALUE
}
