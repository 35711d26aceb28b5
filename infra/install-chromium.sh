#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver (the analytics dashboard test drives a real headless
# browser with them) unless both are on PATH. A downloaded browser build (e.g. Playwright's) does not run here.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
install_chromium() {
    "${SUDO[@]}" apt-get install -y --no-install-recommends chromium chromium-driver
}

if ! install_chromium; then
    "${SUDO[@]}" apt-get update
    install_chromium
fi

command -v chromium >/dev/null && command -v chromedriver >/dev/null
