#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: installs what the tests
# need, starts the services they use (idempotently), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

cargo test --workspace --locked "$@"
