#!/usr/bin/env bash
# The wheels bench/gpu_proof.sh installs on the GPU machine, into .whl/: this project's, and the
# packages that machine's image lacks (its Python is 3.12; torch, numpy, onnx, matplotlib, requests
# and the rest are there), at the versions installed here. Run from the repository root, in the
# project's virtual environment. Never add one the image has at another version: an older
# typing-extensions carried there broke its anyio.
set -euo pipefail
names="alembic annotated-types backports.strenum cachetools cffi colorlog cryptography databricks-sdk fastapi
google-auth importlib-metadata mako mlflow moocore opentelemetry-api opentelemetry-proto opentelemetry-sdk
opentelemetry-semantic-conventions optuna platformdirs protobuf pydantic pydantic-core sqlalchemy sqlparse
starlette typing-inspection ultralytics-thop wcwidth"
pinned=$(python -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $names)
rm -rf .whl && mkdir .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pinned
python -m pip wheel -q --no-deps --no-build-isolation . -w .whl
rm -rf build
du -sh .whl
