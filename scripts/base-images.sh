#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's two base images, python:3.11-slim and node:20-slim, built from
# Debian packages, for a machine that cannot reach Docker Hub. An image that is already there, or
# that `docker pull` can fetch, is left alone; only missing ones are built.
#
#   debootstrap --variant=minbase bookworm (from this machine's own apt mirror), then Python 3.11 with
#   venv and pip (Debian 12's own) or Node.js with npm, this machine's extra CA certificates (pip and
#   npm inside the containers need them where a proxy re-signs HTTPS), then `docker import`.
#
# Needs root, debootstrap and a running Docker engine. DOCKER may name the client (default: docker).
set -euo pipefail

DOCKER="${DOCKER:-docker}"
WORK="${BASE_IMAGES_WORK:-/var/tmp/llm-toolkit-base-images}"

mirror() {
  # the first Debian mirror in this machine's apt sources (deb822 or one-line format)
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [[ -z "$uri" ]]; then
    uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

build() {
  local tag=$1 packages=$2
  shift 2
  if have "$tag"; then
    echo "base image $tag: present"
    return
  fi
  if timeout 60 "$DOCKER" pull -q "$tag" >/dev/null 2>&1; then
    echo "base image $tag: pulled"
    return
  fi
  echo "base image $tag: building from Debian packages (Docker Hub is not reachable)"
  local root="$WORK/${tag//[:\/]/-}"
  rm -rf "$root"
  mkdir -p "$root"
  debootstrap --variant=minbase bookworm "$root" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 \
    || { cat "$WORK/debootstrap.log" >&2; exit 1; }
  local log="$WORK/${tag//[:\/]/-}.log"
  # shellcheck disable=SC2086
  if ! chroot "$root" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $packages ca-certificates" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  chroot "$root" update-ca-certificates >/dev/null 2>&1
  chroot "$root" /bin/sh -c "apt-get clean && rm -rf /var/lib/apt/lists/*"
  local changes=()
  for change in "$@"; do changes+=(--change "$change"); done
  tar -C "$root" -c . | "$DOCKER" import "${changes[@]}" - "$tag" >/dev/null
  rm -rf "$root"
  echo "base image $tag: built ($("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

bundle=/etc/ssl/certs/ca-certificates.crt
path="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
build python:3.11-slim "python3 python3-venv python3-pip python-is-python3" \
  "ENV $path" "ENV PIP_CERT=$bundle" "ENV REQUESTS_CA_BUNDLE=$bundle" "ENV SSL_CERT_FILE=$bundle" \
  'CMD ["python3"]'
build node:20-slim "nodejs npm" \
  "ENV $path" "ENV NODE_EXTRA_CA_CERTS=$bundle" 'CMD ["node"]'
