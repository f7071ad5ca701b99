#!/usr/bin/env bash
# Installs the system packages Weir's build needs, if they are missing (Debian/Ubuntu).
#   libclang-dev: bindgen for the RocksDB bindings; protobuf-compiler: protoc for the gRPC code;
#   build-essential: the C++ compiler RocksDB is built with; postgresql-client: psql, for the tests;
#   kcat and a Python virtualenv with kafka-python and confluent-kafka: Kafka clients for the tests
#   of the Kafka protocol; apache2-utils: Apache Bench (ab), which the restaurant example posts
#   events with, as its seed did.
set -euo pipefail
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v g++ >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
# psql: the tests check that the Postgres protocol serves it.
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# kcat, kafka-python, confluent-kafka: the tests check that Kafka's own clients work unchanged.
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# ab: the restaurant example's test posts events with it.
command -v ab >/dev/null 2>&1 || need+=(apache2-utils)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
# The Kafka clients' Python packages live in their own virtualenv (tests find it there, or take
# WEIR_PYTHON), so the system's Python is left as it is.
py_env="${XDG_CACHE_HOME:-$HOME/.cache}/weir/py"
if ! "$py_env/bin/python" -c 'import kafka, confluent_kafka' >/dev/null 2>&1; then
  echo "installing kafka-python and confluent-kafka into $py_env"
  python3 -m venv "$py_env"
  "$py_env/bin/python" -m pip install -q kafka-python confluent-kafka
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
