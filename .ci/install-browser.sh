#!/usr/bin/env bash
# Install what the tests need from Debian, if it is missing: chromium for the browser tests
# (tests/test_browser.py), the PDF report's fonts, DejaVu Sans (fonts-dejavu-core) and
# the CJK fallback WenQuanYi Zen Hei (fonts-wqy-zenhei; xray_ai/outputs/report_layout.py),
# and the DICOM tools the DICOM node and DICOM results are tested against: orthanc (the PACS),
# dcmtk (storescu, echoscu, dsrdump, dcm2pdf) and dicom3tools (dciodvfy, the IOD checker;
# tests/test_pacs_node.py, tests/test_dicom_results.py).
# Idempotent: does nothing when all are already there. Meant to run as root in CI; uses sudo
# when run as another user and sudo is available.
# Playwright's own browser download is not used: the tests launch /usr/bin/chromium.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
FONTS=(/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc)

# The DICOM tools: one program of each package stands for it.
DICOM_TOOLS=(/usr/sbin/Orthanc /usr/bin/storescu /usr/bin/dciodvfy)
DICOM_PACKAGES=(orthanc dcmtk dicom3tools)

fonts_present() {
    for f in "${FONTS[@]}"; do [ -f "$f" ] || return 1; done
}

dicom_tools_present() {
    for f in "${DICOM_TOOLS[@]}"; do [ -x "$f" ] || return 1; done
}

if [ -x "$CHROMIUM" ] && fonts_present && dicom_tools_present; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"); PDF fonts and DICOM tools present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser.sh: not root and no sudo; cannot install chromium, fonts or DICOM tools" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if ! fonts_present; then
    echo "installing the PDF report's fonts with apt-get..."
    $SUDO apt-get install -y -qq --no-install-recommends fonts-dejavu-core fonts-wqy-zenhei >/dev/null
fi
if ! dicom_tools_present; then
    echo "installing the DICOM test tools (${DICOM_PACKAGES[*]}) with apt-get..."
    # The orthanc package installs a system service (ports 4242 and 8042 where it starts); the
    # tests do not use it: they start their own Orthanc on free loopback ports.
    $SUDO apt-get install -y -qq --no-install-recommends "${DICOM_PACKAGES[@]}" >/dev/null
    if ! dicom_tools_present; then
        echo "install-browser.sh: apt-get finished but a DICOM tool is missing (${DICOM_TOOLS[*]})" >&2
        exit 1
    fi
fi
if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi
echo "installing chromium with apt-get..."
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
# Fonts: without any, pages render as empty boxes in screenshots (usually already present).
$SUDO apt-get install -y -qq --no-install-recommends fonts-liberation >/dev/null || true

if [ ! -x "$CHROMIUM" ]; then
    echo "install-browser.sh: apt-get finished but $CHROMIUM is missing" >&2
    exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
