#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the tests use, if they are not already answering.
# Stops with a message saying what is missing and how to provide it when it cannot.
set -euo pipefail

PG_HOST=${ETF_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${ETF_TEST_PG_PORT:-5432}
REDIS_PORT=${ETF_TEST_REDIS_PORT:-6379}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-services: PostgreSQL client tools (pg_isready) are not installed." >&2
  echo "  Install PostgreSQL 15+ (Debian: apt-get install postgresql) with trust auth on" >&2
  echo "  $PG_HOST:$PG_PORT, or point ETF_TEST_PG_HOST/ETF_TEST_PG_PORT at a server." >&2
  exit 1
fi
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
  if ! pg_up; then
    echo "ensure-services: PostgreSQL is not answering on $PG_HOST:$PG_PORT and could not be started." >&2
    echo "  Start it (pg_ctlcluster <version> main start) or set ETF_TEST_PG_HOST/ETF_TEST_PG_PORT." >&2
    exit 1
  fi
fi

if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  if ! redis_up; then
    echo "ensure-services: Redis is not installed (Debian: apt-get install redis-server)." >&2
    exit 1
  fi
fi
if ! redis_up; then
  echo "ensure-services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
  for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  if ! redis_up; then
    echo "ensure-services: Redis did not start on 127.0.0.1:$REDIS_PORT." >&2
    exit 1
  fi
fi
echo "ensure-services: PostgreSQL $PG_HOST:$PG_PORT and Redis 127.0.0.1:$REDIS_PORT are up"
