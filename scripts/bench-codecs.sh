#!/usr/bin/env bash
# Bitrate at equal quality per codec: builds the daemon and
# examples/codec_bitrate.rs in release mode and runs it (vsockenc,
# vsockh265enc and vsockav1enc through the real vsockenc-host, desktop-like
# content and full motion, PSNR against the input). Writes
# docs/codec-bitrate.json and the printed tables to
# $CARGO_TARGET_DIR/codec-bitrate.txt. About a minute on 2 cores.
#
#   scripts/bench-codecs.sh
#   scripts/bench-codecs.sh --width 1280 --height 720 --frames 300
#
# Arguments go to the example (see `--help`); any of them sends the JSON to
# the target dir instead of docs/. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

out=docs
[ "$#" -eq 0 ] || out="$CARGO_TARGET_DIR"
scripts/setup.sh
cargo build --release --locked -p vsockenc-host
cargo build --release --locked -p gst-plugin-vsockenc --example codec_bitrate
"$CARGO_TARGET_DIR/release/examples/codec_bitrate" \
    --host-bin "$CARGO_TARGET_DIR/release/vsockenc-host" \
    --json "$out/codec-bitrate.json" "$@" | tee "$CARGO_TARGET_DIR/codec-bitrate.txt"
