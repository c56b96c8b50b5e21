#!/usr/bin/env bash
# Build the image and start the stack detached (make up). Options: --gpu | --cpu, --profile NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/compose.sh
source scripts/compose.sh
ensure_env_file
compose build
compose up -d
echo "started on the $([[ $GPU == 1 ]] && echo GPU || echo CPU): dashboard http://localhost:3000  GraphQL http://localhost:8080/graphql  JupyterLab http://localhost:8888 (token in $ENV_FILE)"
