#!/usr/bin/env bash
# Installs what the camera app's browser test (tests/test_camera_browser.py) needs:
#   - Debian's chromium (apt), used by the test at /usr/bin/chromium;
#   - Playwright for Python (pip), which drives that chromium through executable_path;
#   - the camera app's own packages when missing: fastapi, uvicorn, websockets,
#     opencv-python-headless, httpx (set CAMERA_DEPS=0 to skip them).
# Idempotent: installed pieces are left alone. It never runs `playwright install` and never
# downloads a browser build: only the apt and pip registries are used.
set -euo pipefail

PY="${PYTHON:-$(command -v python || command -v python3)}"
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_browser.sh: apt-get needs root (or sudo)" >&2; exit 1
  fi
fi

if [ -x /usr/bin/chromium ]; then
  echo "chromium: present ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
else
  echo "chromium: installing from apt"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium
fi

pip_missing() {   # pip_missing MODULE PACKAGE... : installs PACKAGE when MODULE does not import
  local module="$1"; shift
  if "$PY" -c "import ${module}" >/dev/null 2>&1; then
    echo "${module}: present"
  else
    echo "${module}: installing $*"
    "$PY" -m pip install -q "$@"
  fi
}

pip_missing playwright.sync_api playwright
if [ "${CAMERA_DEPS:-1}" != "0" ]; then
  pip_missing fastapi "fastapi>=0.100"
  pip_missing uvicorn "uvicorn>=0.23"
  pip_missing websockets "websockets>=12"
  pip_missing cv2 "opencv-python-headless>=4.8"
  pip_missing httpx "httpx>=0.24"
fi
echo "browser test dependencies ready (chromium at /usr/bin/chromium; no browser download)"
