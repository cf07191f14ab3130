#!/usr/bin/env bash
# The tests on a busy machine: README command 2, word for word (read from README.md), while a CPU
# hog (a busy loop) takes one of the machine's cores for the whole run, as a shared CI machine's
# neighbours do. A test that passes only on a quiet machine fails here.
#
#   bash taxi_assets_tests/under_load.sh                 README command 2 under the hog
#   bash taxi_assets_tests/under_load.sh --production    the production marker under the hog
#   bash taxi_assets_tests/under_load.sh --ci            all of .ci/run (lint, fresh install, both
#                                                        tiers) under the hog, as CI=true
#
# Prints the hog's CPU time at the end, so a run can show the hog really had its core.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'while True: pass' &
hog=$!
trap 'kill "$hog" 2>/dev/null || true' EXIT
started=$(date +%s)

if [ "${1:-}" = "--production" ]; then
    command="TAXI_DATA_DIR=../shared/data/taxi/green .venv/bin/python -m pytest -m production"
elif [ "${1:-}" = "--ci" ]; then
    command="CI=true bash .ci/run"
else
    command=$(python3 -m taxi_assets_tests.readme_commands 2)
fi
echo "under load (hog pid $hog on one core): $command"
status=0
bash -c "$command" || status=$?

hog_seconds=$(ps -o cputime= -p "$hog" | awk -F: '{print ($1 * 3600) + ($2 * 60) + $3}')
echo "under load: exit $status after $(($(date +%s) - started)) s wall; the hog used ${hog_seconds} s of CPU"
exit "$status"
