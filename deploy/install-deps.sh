#!/usr/bin/env bash
# Installs the system packages Weir's build needs, if they are missing (Debian/Ubuntu).
#   libclang-dev: bindgen for the RocksDB bindings; protobuf-compiler: protoc for the gRPC code;
#   build-essential: the C++ compiler RocksDB is built with; postgresql-client: psql, for the tests.
set -euo pipefail
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v g++ >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
# psql: the tests check that the Postgres protocol serves it.
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
