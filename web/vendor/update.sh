#!/usr/bin/env bash
# Re-vendor onnxruntime-web from the npm registry (run from anywhere; needs npm).
# Only the WASM build is kept: the page runs on the CPU, and the WebGPU/WebGL
# builds would add tens of MB.
set -euo pipefail
VERSION="${1:-1.30.0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null && tar xzf onnxruntime-web-*.tgz)
for f in ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
    cp "$tmp/package/dist/$f" "$here/$f"
done
sed -i "1s/.*/onnxruntime-web $VERSION (npm: https:\/\/www.npmjs.com\/package\/onnxruntime-web)/" \
    "$here/LICENSE-onnxruntime-web"
echo "vendored onnxruntime-web $VERSION into $here"
