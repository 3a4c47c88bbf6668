#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_browser.py), if it is missing.
# Idempotent: does nothing when /usr/bin/chromium already exists. Meant to run as root in CI;
# uses sudo when run as another user and sudo is available.
# Playwright's own browser download is not used: the tests launch /usr/bin/chromium.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser.sh: not root and no sudo; cannot install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "installing chromium with apt-get..."
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
# Fonts: without any, pages render as empty boxes in screenshots (usually already present).
$SUDO apt-get install -y -qq --no-install-recommends fonts-liberation >/dev/null || true

if [ ! -x "$CHROMIUM" ]; then
    echo "install-browser.sh: apt-get finished but $CHROMIUM is missing" >&2
    exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
