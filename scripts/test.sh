#!/usr/bin/env bash
# The test command: installs redis-server when it is missing (the store and end-to-end tests
# start real Redis servers, Clusters and Sentinels on loopback ports), builds the wxgate binary
# that the cross-process tests spawn, then runs every test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "installing redis-server (Debian package) for the tests"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build -p wxgate --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
