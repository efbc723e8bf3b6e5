#!/usr/bin/env bash
# Trains gankd_jax on a Cloud TPU VM pod slice: create the slice, copy the code to every worker,
# install, run the same command on all workers, collect one log per worker, delete the slice.
#
# Usage: PROJECT=my-project WORKDIR=gs://my-bucket/runs/omgd launch/tpu_pod.sh [--help]
#
# Environment (defaults in brackets):
#   PROJECT          Google Cloud project (required)
#   WORKDIR          run directory shared by all workers, e.g. gs://BUCKET/runs/NAME (required)
#   ZONE             [us-central2-b]        zone that has the accelerator
#   TPU_NAME         [gankd-$USER]          name of the TPU VM
#   ACCELERATOR      [v4-32]                accelerator type (v4-32: 4 workers x 4 chips)
#   RUNTIME_VERSION  [tpu-ubuntu2204-base]  TPU VM software version
#   CONFIG           [configs/omgd.py]      config file, optionally :VARIANT
#   EXTRA_ARGS       []                     more flags for gankd_jax.main, e.g. "--config.batch_size=64"
#   REPO_URL         []                     git URL to clone on the workers; default: copy this checkout
#   REPO_REF         []                     branch or tag of REPO_URL
#   NUM_WORKERS      [from the slice]       number of TPU VM hosts (asked from gcloud when unset)
#   LOG_DIR          [logs/$TPU_NAME]       where worker-<i>.log files are written
#   REUSE=1          use an existing TPU VM: do not create it, do not delete it
#   KEEP=1           do not delete the TPU VM at the end
#   DRY_RUN=1        print the gcloud commands instead of running them
#
# Every worker runs `python -m gankd_jax.main --config=$CONFIG --workdir=$WORKDIR
# --num_processes=$NUM_WORKERS $EXTRA_ARGS`; JAX finds the coordinator and each worker's process id
# from the TPU metadata. Running the script again with the same WORKDIR resumes the run.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "error: unexpected argument '$1' (settings are environment variables; see --help)" >&2
  exit 2
fi

: "${PROJECT:?set PROJECT to your Google Cloud project (see --help)}"
: "${WORKDIR:?set WORKDIR to a directory all workers share, e.g. gs://BUCKET/runs/NAME (see --help)}"
ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-gankd-${USER:-user}}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/omgd.py}
EXTRA_ARGS=${EXTRA_ARGS:-}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-}
NUM_WORKERS=${NUM_WORKERS:-}
LOG_DIR=${LOG_DIR:-logs/$TPU_NAME}
REUSE=${REUSE:-0}
KEEP=${KEEP:-0}
DRY_RUN=${DRY_RUN:-0}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2088  # The tildes are meant for the worker's shell.
REMOTE_REPO='~/gankd_jax'
# shellcheck disable=SC2088
REMOTE_VENV='~/gankd_venv'
PYTHON_VERSION=3.11                # requirements.txt pins need Python >= 3.11; the image has 3.10.
JAX_VERSION=$(sed -n 's/^jax==//p' "$REPO_ROOT/requirements.txt")
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--project="$PROJECT" --zone="$ZONE")

if [[ "$WORKDIR" != gs://* ]]; then
  echo "warning: WORKDIR=$WORKDIR is not on GCS; it must be a filesystem every worker shares" >&2
fi

# One shell word, single-quoted unless it is plainly safe, so printed commands can be pasted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it (quoted, ready to paste) when DRY_RUN=1.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local words=() word
    for word in "$@"; do
      words+=("$(quote "$word")")
    done
    echo "${words[*]}"
  else
    "$@"
  fi
}

on_all_workers() {
  run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}

CREATED=0
TARBALL=
cleanup() {
  local status=$?
  [[ -z "$TARBALL" ]] || rm -f "$TARBALL"
  if [[ "$CREATED" == 1 && "$KEEP" != 1 ]]; then
    echo "deleting $TPU_NAME (KEEP=1 keeps it)" >&2
    run "${TPU[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet || status=1
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

create_tpu() {
  if [[ "$REUSE" == 1 ]]; then
    return
  fi
  run "${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION"
  # Only after creation succeeded: never delete a TPU VM of the same name that was not ours.
  CREATED=1
}

count_workers() {
  if [[ -n "$NUM_WORKERS" ]]; then
    echo "$NUM_WORKERS"
  elif [[ "$DRY_RUN" == 1 ]]; then
    run "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(networkEndpoints[].ipAddress)' >&2
    echo "# a dry run cannot count the workers: showing 1 (set NUM_WORKERS)" >&2
    echo 1
  else
    "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(networkEndpoints[].ipAddress)' \
      | tr ';' '\n' | grep -c .
  fi
}

copy_code() {
  if [[ -n "$REPO_URL" ]]; then
    local branch=${REPO_REF:+--branch $(quote "$REPO_REF") }
    on_all_workers "rm -rf $REMOTE_REPO && git clone --depth=1 $branch$(quote "$REPO_URL") $REMOTE_REPO"
    return
  fi
  # Tracked and untracked-but-not-ignored files: what `git status` sees, without .venv or runs.
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# (git ls-files --cached --others --exclude-standard | tar -czf gankd_jax.tgz)"
    TARBALL_SHOWN=gankd_jax.tgz
  else
    TARBALL=$(mktemp "${TMPDIR:-/tmp}/gankd_jax.XXXXXX")
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard \
      | tar --null --files-from=- -czf "$TARBALL")
    TARBALL_SHOWN=$TARBALL
  fi
  run "${TPU[@]}" scp "$TARBALL_SHOWN" "$TPU_NAME:gankd_jax.tgz" "${WHERE[@]}" --worker=all
  on_all_workers "rm -rf $REMOTE_REPO && mkdir -p $REMOTE_REPO && tar -xzf gankd_jax.tgz -C $REMOTE_REPO"
}

install_requirements() {
  # uv fetches Python $PYTHON_VERSION; jax[tpu] (with libtpu) replaces the pinned CPU jax/jaxlib.
  on_all_workers "set -e; cd $REMOTE_REPO; python3 -m pip install -q --user uv; \
~/.local/bin/uv venv -q --python $PYTHON_VERSION $REMOTE_VENV; \
grep -v -E '^(jax|jaxlib)==' requirements.txt > /tmp/requirements-tpu.txt; \
~/.local/bin/uv pip install -q --python $REMOTE_VENV/bin/python -r /tmp/requirements-tpu.txt 'jax[tpu]==$JAX_VERSION'"
}

# One ssh per worker, in parallel, so every worker's output lands in its own log and its exit
# status is known; the run fails if any worker fails.
train_on_all_workers() {
  local workers=$1 command pids=() failed=0
  command="cd $REMOTE_REPO && $REMOTE_VENV/bin/python -m gankd_jax.main \
--config=$(quote "$CONFIG") --workdir=$(quote "$WORKDIR") --num_processes=$workers${EXTRA_ARGS:+ $EXTRA_ARGS}"
  run mkdir -p "$LOG_DIR"
  for ((w = 0; w < workers; w++)); do
    if [[ "$DRY_RUN" == 1 ]]; then
      echo "$(run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="$w" --command="$command") \
> $LOG_DIR/worker-$w.log 2>&1 &"
    else
      "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="$w" --command="$command" \
        > "$LOG_DIR/worker-$w.log" 2>&1 &
      pids+=($!)
    fi
  done
  [[ "$DRY_RUN" != 1 ]] || echo wait
  for ((w = 0; w < ${#pids[@]}; w++)); do
    if ! wait "${pids[$w]}"; then
      echo "worker $w failed; see $LOG_DIR/worker-$w.log" >&2
      failed=1
    fi
  done
  [[ "$DRY_RUN" == 1 ]] || echo "logs: $LOG_DIR/worker-*.log; run directory: $WORKDIR" >&2
  return "$failed"
}

create_tpu
workers=$(count_workers)
copy_code
install_requirements
train_on_all_workers "$workers"
