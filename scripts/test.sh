#!/usr/bin/env bash
# The project's test command (see README.md, "Quick start").
#
# Release mode, because the deterministic simulations are CPU heavy. `--all-targets` also builds
# the benches and runs them once in test mode, so they cannot rot.
#
# Arguments are passed on to the first `cargo test`, e.g.
#   scripts/test.sh -- --ignored      # the slow soak tests (10,000-seed simulation)
#   scripts/test.sh protocol::        # only tests whose name contains `protocol::`
# They are not passed to the doctest run: `--ignored` there would try to run doc examples that are
# marked `ignore` on purpose.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> cargo test --release --all-targets $*"
cargo test --release --all-targets "$@"

echo "==> cargo test --release --doc"
cargo test --release --doc

echo "==> scripts/test.sh: all tests passed"
