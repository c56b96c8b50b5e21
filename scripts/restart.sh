#!/usr/bin/env bash
# Stop, rebuild and start again (make restart). Options as start.sh: --gpu | --cpu, --profile NAME.
set -euo pipefail
here="$(dirname "$0")"
bash "$here/stop.sh" "$@"
bash "$here/start.sh" "$@"
