#!/usr/bin/env bash
# Installs Debian's espeak-ng (used by the `asr` tests to synthesize real speech) unless it is on PATH.
set -euo pipefail

if command -v espeak-ng >/dev/null 2>&1; then
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
install_espeak() {
    "${SUDO[@]}" apt-get install -y --no-install-recommends espeak-ng
}

if ! install_espeak; then
    "${SUDO[@]}" apt-get update
    install_espeak
fi

command -v espeak-ng >/dev/null
