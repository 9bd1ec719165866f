#!/usr/bin/env bash
# Debian packages cargohold's tests, demo and benchmarks use. Idempotent; needs root (or sudo).
set -euo pipefail
PKGS=(python3 python3-venv docker-registry containerd runc busybox-static
      golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev
      golang-github-gogo-googleapis-dev e2fsprogs util-linux openssl mount skopeo umoci
      prometheus-node-exporter systemd)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
