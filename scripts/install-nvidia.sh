#!/usr/bin/env bash
# Install the NVIDIA driver and the NVIDIA container toolkit on a Debian or Ubuntu host, so that
# `make up` can give the containers the GPU. Idempotent: what is installed already is skipped.
# Refuses any other system. `--dry-run` prints the steps without running them.
set -euo pipefail

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
OS_RELEASE="${OS_RELEASE:-/etc/os-release}"

run() {
  echo "+ $*"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

if [[ ! -r "$OS_RELEASE" ]]; then
  echo "install-nvidia: cannot read $OS_RELEASE; this script supports Debian and Ubuntu only" >&2
  exit 1
fi
# shellcheck disable=SC1090
. "$OS_RELEASE"
case "${ID:-}" in
  debian | ubuntu) ;;
  *)
    echo "install-nvidia: this host is '${ID:-unknown}'; only Debian and Ubuntu are supported." >&2
    echo "See https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/ for other systems." >&2
    exit 1
    ;;
esac
if [[ $DRY_RUN == 0 && $(id -u) != 0 ]]; then
  echo "install-nvidia: run as root (make nvidia-setup uses sudo)" >&2
  exit 1
fi

if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
  echo "NVIDIA driver: present ($(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1))"
else
  echo "NVIDIA driver: installing"
  run apt-get update
  if [[ "$ID" == ubuntu ]]; then
    run apt-get install -y ubuntu-drivers-common
    run ubuntu-drivers install
  else
    # Debian: the driver is in non-free (and non-free-firmware on bookworm and later)
    run apt-get install -y nvidia-driver firmware-misc-nonfree
  fi
  echo "NVIDIA driver: installed; reboot before using the GPU"
fi

if command -v nvidia-ctk >/dev/null; then
  echo "NVIDIA container toolkit: present"
else
  echo "NVIDIA container toolkit: installing"
  run apt-get install -y curl gnupg ca-certificates
  keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  list=/etc/apt/sources.list.d/nvidia-container-toolkit.list
  if [[ $DRY_RUN == 0 ]]; then
    curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor --yes -o "$keyring"
    curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
      | sed "s#deb https://#deb [signed-by=$keyring] https://#g" > "$list"
  else
    echo "+ add NVIDIA's apt repository ($list, signed by $keyring)"
  fi
  run apt-get update
  run apt-get install -y nvidia-container-toolkit
fi

if command -v docker >/dev/null; then
  run nvidia-ctk runtime configure --runtime=docker
  run systemctl restart docker
else
  echo "Docker is not installed: install Docker Engine, then run this again to configure its NVIDIA runtime."
fi
echo "done: try 'docker run --rm --gpus all ubuntu nvidia-smi'"
