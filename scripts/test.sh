#!/usr/bin/env bash
# The project's test command:
#
#   bash scripts/test.sh [extra arguments for cargo test]
#
# Makes sure PostgreSQL and NATS (JetStream) are reachable and Chromium is installed for the
# steward page's browser test (scripts/services.sh; may need
# root the first time, to install or start them), then runs the whole workspace's tests.
# To use services elsewhere, set IDLEDGER_TEST_DATABASE_URL / IDLEDGER_TEST_NATS_URL and
# IDLEDGER_SKIP_SERVICES=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null || {
  echo "test.sh: error: cargo not found; install Rust (https://rustup.rs) and retry" >&2
  exit 1
}

if [ "${IDLEDGER_SKIP_SERVICES:-}" != 1 ]; then
  bash scripts/services.sh
fi

export IDLEDGER_TEST_DATABASE_URL=${IDLEDGER_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export IDLEDGER_TEST_NATS_URL=${IDLEDGER_TEST_NATS_URL:-nats://127.0.0.1:4222}

exec cargo test --workspace --locked "$@"
