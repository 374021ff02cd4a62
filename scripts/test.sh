#!/usr/bin/env bash
# Installs what the tests need and runs davit's whole test suite (as CI does: `.ci/run` calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> test guest (vm driver) and test images (container driver)"
scripts/build-guest.sh
scripts/test-images.sh
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
