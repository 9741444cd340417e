#!/usr/bin/env bash
# One command from a fresh clone to the flagship demo: install, fetch Kafka,
# build the ImageNet model (cached), then run `streamserve demo`
# (`demo.sh transactions`: the card-transactions demo, no ImageNet build).
set -euo pipefail
cd "$(dirname "$0")/.."

# Java 17 and Maven run the Kafka broker and fetch its jars; install them if missing.
if { ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[models,bench]'
# The transactions demo (`demo.sh transactions`) runs a Schema Registry (fetched too) and
# trains its own model: it needs no ImageNet build.
demo=imagenet
for arg in "$@"; do
  if [ "$arg" = transactions ]; then demo=transactions; fi
done
if [ "$demo" = transactions ]; then
  streamserve kafka fetch --schema-registry
  streamserve demo "$@"
else
  streamserve kafka fetch
  streamserve models build imagenet --out models/imagenet
  streamserve demo --model-base-path models/imagenet "$@"
fi
