#!/usr/bin/env bash
# The README's first command: builds millgate (release) and runs it on the embedded default
# config.toml, or with `--config FILE` on yours. Before the build it checks the tools the build
# needs besides Rust and, on Debian/Ubuntu, offers to install the missing ones
# (scripts/build-deps.sh). With them, this is `cargo run --release -- run "$@"`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

command -v cargo >/dev/null || { echo "run.sh: Rust is required: install it from https://rustup.rs" >&2; exit 1; }
"$root/scripts/build-deps.sh"
# From the caller's directory: `--config FILE` and the default store ./data are relative to it.
exec cargo run --release --manifest-path "$root/Cargo.toml" -- run "$@"
