#!/bin/sh
# Install what the Redis backend's tests need (Debian): the redis-server
# binary (the tests start their own instances on free loopback ports and
# stop them; the system service is not started) and redis-py (the `test`
# extra has it).  Run as root before the test suite.
set -eu
if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends redis-server
fi
redis-server --version
