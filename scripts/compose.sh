# Sourced by start.sh, stop.sh and restart.sh: which compose command there is, which files and
# profiles to use, and the .env file. Options (any order):
#   --gpu | --cpu        add docker-compose.gpu.yml, or not (default: when Docker has the NVIDIA runtime)
#   --profile NAME       also the services of a compose profile (repeatable), e.g. --profile vllm
# Environment: ENV_FILE (default .env), DOCKER (default docker), COMPOSE_PROJECT_NAME.

DOCKER="${DOCKER:-docker}"
ENV_FILE="${ENV_FILE:-.env}"
GPU=auto
PROFILES=()
ALL_PROFILES=(vllm)  # every profile docker-compose.yml defines: stop.sh takes their services down too

while (($#)); do
  case "$1" in
    --gpu) GPU=1 ;;
    --cpu) GPU=0 ;;
    --profile)
      [[ $# -ge 2 ]] || { echo "$0: --profile needs a name" >&2; exit 2; }
      PROFILES+=("$2")
      shift
      ;;
    -h | --help)
      sed -n '2,6p' "$(dirname "${BASH_SOURCE[0]}")/compose.sh" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "$0: unknown option $1 (use --gpu, --cpu or --profile NAME)" >&2; exit 2 ;;
  esac
  shift
done

if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "$0: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi

if [[ $GPU == auto ]]; then
  GPU=0
  if "$DOCKER" info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then GPU=1; fi
fi

ensure_env_file() {
  # .env from .env.example, with a fresh JupyterLab token in its JUPYTER_TOKEN line (not a second one)
  if [[ ! -f "$ENV_FILE" ]]; then
    local token
    token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    sed "s/^JUPYTER_TOKEN=.*/JUPYTER_TOKEN=$token/" .env.example >"$ENV_FILE"
    echo "wrote $ENV_FILE from .env.example with a new JUPYTER_TOKEN; set HF_TOKEN and MODEL_ID there for a Hub model"
  fi
}

# The vllm profile's server serves the vllm service's model beside the bundled one.
for profile in "${PROFILES[@]}"; do
  if [[ $profile == vllm && -z "${MODELS_FILE:-}" ]]; then export MODELS_FILE=/app/deploy/models.vllm.toml; fi
done

compose() {
  local args=(-f docker-compose.yml)
  [[ $GPU == 1 ]] && args+=(-f docker-compose.gpu.yml)
  [[ -f "$ENV_FILE" ]] && args+=(--env-file "$ENV_FILE")
  local profile
  for profile in "${PROFILES[@]}"; do args+=(--profile "$profile"); done
  # the lab runs as the host user who owns ./notebooks, so that saving works
  APP_UID="${APP_UID:-$(stat -c %u notebooks)}" APP_GID="${APP_GID:-$(stat -c %g notebooks)}" \
    "${COMPOSE[@]}" "${args[@]}" "$@"
}
