#!/usr/bin/env bash
# Checks the tools the build needs besides Rust and offers to install the missing ones.
#
#   scripts/build-deps.sh          check; on Debian/Ubuntu ask before `apt-get install`
#   scripts/build-deps.sh --yes    check and install without asking (CI, scripts/services.sh)
#   scripts/build-deps.sh --check  check only: exit 1 and name what is missing
#
# The Kafka connector compiles librdkafka and OpenSSL from source (actors/Cargo.toml): that
# needs a C and a C++ compiler, make, and a full perl (OpenSSL's Configure uses FindBin and
# IPC::Cmd, which Debian's perl-base lacks). Debian's build-essential brings all of them.
# No cmake, pkg-config or -dev packages.
set -euo pipefail

mode=ask
case "${1:-}" in
    --yes | -y) mode=yes ;;
    --check) mode=check ;;
    "") ;;
    *) echo "usage: $0 [--yes | --check]" >&2; exit 2 ;;
esac

missing=()
command -v cc >/dev/null || missing+=("a C compiler (cc)")
command -v c++ >/dev/null || missing+=("a C++ compiler (c++)")
command -v make >/dev/null || missing+=(make)
perl -MFindBin -MIPC::Cmd -MFile::Copy -MFile::Path -e1 2>/dev/null \
    || missing+=("perl with its standard modules (FindBin, IPC::Cmd)")

if ((${#missing[@]} == 0)); then
    exit 0
fi

{
    echo "millgate's build needs, besides Rust, a C/C++ toolchain with make and perl"
    echo "(it compiles librdkafka and OpenSSL). Missing:"
    for m in "${missing[@]}"; do echo "  - $m"; done
} >&2

if ! command -v apt-get >/dev/null; then
    echo "Install them with your system's package manager (Fedora: dnf install gcc gcc-c++ make perl)." >&2
    exit 1
fi
# build-essential is what the Rust book asks for on Debian/Ubuntu; perl for its modules.
install=(apt-get install -y --no-install-recommends build-essential perl)
sudo=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "Run as root: ${install[*]}" >&2
        exit 1
    fi
fi
if [ "$mode" = check ]; then
    echo "Install them with: ${sudo[*]:+${sudo[*]} }${install[*]}" >&2
    exit 1
fi
if [ "$mode" = ask ]; then
    if [ ! -t 0 ]; then
        echo "Install them with: ${sudo[*]:+${sudo[*]} }${install[*]}" >&2
        echo "(or run $0 --yes to let it do that)" >&2
        exit 1
    fi
    read -r -p "Install them now with \`${sudo[*]:+${sudo[*]} }${install[*]}\`? [Y/n] " answer
    case "$answer" in
        "" | [Yy]*) ;;
        *) echo "Nothing installed." >&2; exit 1 ;;
    esac
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" "${install[@]}"
