#!/usr/bin/env bash
# The reverse proxy the front-door tests run (tests/test_proxy.py): Debian's nginx with the
# auth_request module (nginx-light has it), on deploy/proxy's configuration. Installs it with
# apt-get when missing and run as root; otherwise stops with a message saying what is missing.
# ETF_TEST_NGINX names another binary.
set -euo pipefail

NGINX=${ETF_TEST_NGINX:-/usr/sbin/nginx}

has_auth_request() {
  "$NGINX" -V 2>&1 | grep -q -- "--with-http_auth_request_module"
}

if [ -x "$NGINX" ] && has_auth_request; then
  echo "ensure-proxy: $NGINX is installed"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-proxy: installing Debian's nginx-light (apt-get install nginx-light)"
  export DEBIAN_FRONTEND=noninteractive
  # The package starts a server on port 80 when it can: the tests start their own.
  apt-get install -y -qq nginx-light >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light; }
  if [ -f /run/nginx.pid ]; then "$NGINX" -s quit || true; fi
fi
if [ ! -x "$NGINX" ] || ! has_auth_request; then
  echo "ensure-proxy: nginx with the auth_request module is not installed at $NGINX and could not be installed." >&2
  echo "  Install it (Debian: apt-get install nginx-light) or set ETF_TEST_NGINX to an nginx binary." >&2
  exit 1
fi
echo "ensure-proxy: $NGINX is installed"
