#!/usr/bin/env bash
# Installs and starts what the test suite needs, idempotently, on 127.0.0.1 only.
# Today's tests need a Rust toolchain, what the build needs besides it (scripts/build-deps.sh:
# a C/C++ toolchain with make and perl), and the brokers below (NATS, Mosquitto, tansu for
# Kafka, moto for SQS, pstest for Pub/Sub, Postgres's server binaries for private clusters); the dashboard test (tests/dashboard.rs) also needs Debian's chromium, Node.js with npm
# and the packages of tests/dashboard. Brokers are added here as their triggers land.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-deps.sh --yes
need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# NATS with JetStream for tests/nats.rs (that test also starts its own servers from this binary).
[ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
# Mosquitto for tests/mqtt.rs (that test also starts its own broker from this binary).
[ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# tests/mqtt.rs makes its TLS certificates with the openssl command line.
command -v openssl >/dev/null || need_apt+=(openssl)
# tests/postgres.rs starts private clusters (initdb, postgres) from the installed server
# binaries, as the postgres user (setpriv, util-linux) when it runs as root.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
    echo "services.sh: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "services.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
# The dashboard test's browser driver (playwright-core, pinned by package-lock.json); it drives
# /usr/bin/chromium and never downloads a browser of its own.
if [ ! -d tests/dashboard/node_modules/playwright-core ]; then
    echo "services.sh: npm ci in tests/dashboard"
    (cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error)
fi
# The shared NATS server with JetStream on 127.0.0.1:4222, unless something already listens there.
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "services.sh: starting nats-server -js on 127.0.0.1:4222"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null || { echo "services.sh: nats-server did not start (see /var/log/nats-server.log)" >&2; exit 1; }
fi
# The shared Mosquitto on 127.0.0.1:1883, unless something already listens there.
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    echo "services.sh: starting mosquitto on 127.0.0.1:1883"
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' > /tmp/millgate-mosquitto.conf
    /usr/sbin/mosquitto -d -c /tmp/millgate-mosquitto.conf
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null || { echo "services.sh: mosquitto did not start" >&2; exit 1; }
fi
# tansu, a Kafka-protocol broker from crates.io (README.md, "Development"), for tests/kafka.rs. Built once into
# ~/.cargo/bin (12-20 minutes on 2 cores); later runs reuse it. tests/kafka.rs also starts its
# own instances from this binary.
TANSU="${TANSU:-$HOME/.cargo/bin/tansu}"
if [ ! -x "$TANSU" ]; then
    echo "services.sh: building tansu (cargo install tansu --locked --features dynostore; takes a while)"
    cargo install tansu --version 0.6.0 --locked --features dynostore --quiet
fi
# The shared tansu on 127.0.0.1:9092 (in-memory storage), unless something already listens there.
if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    echo "services.sh: starting tansu on 127.0.0.1:9092"
    nohup "$TANSU" broker --listener-url tcp://127.0.0.1:9092 \
        --advertised-listener-url tcp://127.0.0.1:9092 \
        --storage-engine memory://tansu/ > /tmp/millgate-tansu.log 2>&1 &
    for _ in $(seq 300); do
        (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null || { echo "services.sh: tansu did not start (see /tmp/millgate-tansu.log)" >&2; exit 1; }
fi
# The official Standard Webhooks signer for tests/signatures.rs, in a venv it finds at the same path.
PYENV="${MILLGATE_PYENV:-$HOME/.cache/millgate/pyenv}"
if ! "$PYENV/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo "services.sh: installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
    fi
    echo "services.sh: pip install standardwebhooks into $PYENV"
    python3 -m venv "$PYENV"
    "$PYENV/bin/pip" install --quiet --disable-pip-version-check 'standardwebhooks==1.1.0'
fi
# moto's SQS server for tests/sqs.rs on 127.0.0.1:4566 (only flask and flask-cors are needed
# besides moto for its server with SQS), in the same venv.
if ! "$PYENV/bin/python" -c 'import moto, flask, flask_cors' 2>/dev/null; then
    echo "services.sh: pip install moto into $PYENV"
    "$PYENV/bin/pip" install --quiet --disable-pip-version-check 'moto==5.2.5' flask flask-cors
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null; then
    echo "services.sh: starting moto_server on 127.0.0.1:4566"
    nohup "$PYENV/bin/moto_server" -H 127.0.0.1 -p 4566 > /tmp/millgate-moto.log 2>&1 &
    for _ in $(seq 300); do
        (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null || { echo "services.sh: moto_server did not start (see /tmp/millgate-moto.log)" >&2; exit 1; }
fi
# Google's pstest Pub/Sub fake for tests/pubsub.rs on 127.0.0.1:8085: its Go source comes from
# Debian (golang-google-cloud-dev), built offline with scripts/pstest/main.go (~15 s).
PSTEST="${MILLGATE_PSTEST:-$HOME/.cache/millgate/pstest-server}"
if [ ! -x "$PSTEST" ] || [ scripts/pstest/main.go -nt "$PSTEST" ]; then
    if [ ! -f /usr/share/gocode/src/cloud.google.com/go/pubsub/pstest/fake.go ] || ! command -v go >/dev/null; then
        echo "services.sh: installing golang-go golang-google-cloud-dev (for pstest)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go golang-google-cloud-dev
    fi
    echo "services.sh: building pstest-server into $PSTEST"
    gopath="$(mktemp -d)"
    mkdir -p "$gopath/src/pstest-server" "$(dirname "$PSTEST")"
    cp scripts/pstest/main.go "$gopath/src/pstest-server/"
    (cd "$gopath/src/pstest-server" && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" \
        GOCACHE="$gopath/cache" go build -o "$PSTEST" .)
    rm -rf "$gopath"
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/8085) 2>/dev/null; then
    echo "services.sh: starting pstest-server on 127.0.0.1:8085"
    nohup "$PSTEST" -listen 127.0.0.1:8085 > /tmp/millgate-pstest.log 2>&1 &
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/8085) 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>/dev/tcp/127.0.0.1/8085) 2>/dev/null || { echo "services.sh: pstest-server did not start (see /tmp/millgate-pstest.log)" >&2; exit 1; }
fi
echo "services.sh: ready"
