#!/usr/bin/env bash
# The test command: installs redis-server when it is missing (the store and end-to-end tests
# start real Redis servers, Clusters and Sentinels on loopback ports), builds the wxgate binary
# that the cross-process tests spawn, then runs every test with cargo-nextest — or, where
# cargo-nextest is not installed, with `cargo test` in two passes that keep nextest's rule
# (.config/nextest.toml): the three-process cluster tests run one at a time.
# The binary is built with the optional `otlp` feature (span export; off unless configured) and
# the tests with `wxgate-tests/otlp`, so the OTLP export test runs against it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "installing redis-server (Debian package) for the tests"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build -p wxgate --locked --features otlp
features=(--features wxgate-tests/otlp)
# Arguments are test-name filters (e.g. `bash scripts/test.sh cluster_faults`).
# WXGATE_TEST_RUNNER=cargo forces the fallback.
if cargo nextest --version >/dev/null 2>&1 && [ "${WXGATE_TEST_RUNNER:-nextest}" = nextest ]; then
  cargo nextest run --workspace --locked "${features[@]}" --no-fail-fast "$@"
else
  echo "cargo-nextest not found: running the tests with cargo test (faster with nextest: cargo install --locked cargo-nextest)"
  if [ $# -gt 0 ]; then
    cargo test --workspace --lib --bins --tests --locked "${features[@]}" --no-fail-fast -- --test-threads=1 "$@"
  else
    cargo test --workspace --lib --bins --tests --locked "${features[@]}" --no-fail-fast -- --skip cluster_
    cargo test -p wxgate-tests --tests --locked "${features[@]}" --no-fail-fast -- --test-threads=1 cluster_
  fi
fi
