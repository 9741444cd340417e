#!/usr/bin/env bash
# One command from a fresh clone to the flagship demo: install, fetch Kafka,
# build the ImageNet model (cached), then run `streamserve demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -e '.[models,bench]'
streamserve kafka fetch
streamserve models build imagenet --out models/imagenet
streamserve demo --model-base-path models/imagenet "$@"
