#!/bin/sh
# Regenerate the CRI gRPC stubs from worker/runtime/_cri/api.proto (needs grpcio-tools).
# Run from anywhere; the stubs are committed so that the product does not need grpcio-tools.
set -eu
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
  worker/runtime/_cri/api.proto
