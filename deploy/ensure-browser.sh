#!/usr/bin/env bash
# The browser the researcher-view tests drive (tests/test_researcher_view.py): Debian's Chromium
# at /usr/bin/chromium, launched by Playwright (the Python package from uv.lock; Playwright's own
# browser download is not used). Installs it with apt-get when missing and run as root; otherwise
# stops with a message saying what is missing. ETF_TEST_CHROMIUM names another binary.
set -euo pipefail

CHROMIUM=${ETF_TEST_CHROMIUM:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
  echo "ensure-browser: $CHROMIUM is installed"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-browser: installing Debian's chromium (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
fi
if [ ! -x "$CHROMIUM" ]; then
  echo "ensure-browser: Chromium is not installed at $CHROMIUM and could not be installed." >&2
  echo "  Install it (Debian: apt-get install chromium) or set ETF_TEST_CHROMIUM to a Chromium binary." >&2
  exit 1
fi
echo "ensure-browser: $CHROMIUM is installed"
