#!/usr/bin/env bash
# Installs and starts what the test suite needs, idempotently, on 127.0.0.1 only.
# Today's tests (webhooks, HTTP routes, command and http runnables) need only a shell, a C
# toolchain for the build and a Rust toolchain; brokers are added here as their triggers land.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
    echo "services.sh: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "services.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
echo "services.sh: ready"
