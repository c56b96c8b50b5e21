#!/usr/bin/env bash
# Stop and remove the stack's containers (make down), those of every profile too. Volumes stay.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/compose.sh
source scripts/compose.sh
PROFILES=("${ALL_PROFILES[@]}")
JUPYTER_TOKEN="${JUPYTER_TOKEN:-not-needed-to-stop}" compose down --remove-orphans
