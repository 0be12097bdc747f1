#!/usr/bin/env bash
# Prepares a compiler that can build PulseHub plugins for wasm32-unknown-unknown
# on a machine where `rustup target add` cannot download anything.
#
# Debian ships a Rust compiler together with its standard-library sources, so
# the standard library can be built for the wasm target with -Zbuild-std. This
# script unpacks that compiler into a private prefix (nothing is installed over
# rustup's toolchain) and installs the LLVM linker it needs.
#
# Usage: scripts/wasm-toolchain.sh [PREFIX]   (default: target/wasm-toolchain)
# Prints the prefix on its last line. Safe to run again: it does nothing when
# the prefix is already complete.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-$root/target/wasm-toolchain}
rust_version=1.96
llvm_version=22

if [ -x "$prefix/usr/bin/rustc" ] && [ -d "$prefix/usr/lib/rustlib/src/rust/library" ] \
   && [ -x "/usr/lib/llvm-$llvm_version/bin/wasm-ld" ]; then
  echo "$prefix"
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "/usr/lib/llvm-$llvm_version/bin/wasm-ld" ]; then
  echo "installing libllvm$llvm_version and lld-$llvm_version" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "libllvm$llvm_version" "lld-$llvm_version" >&2
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "unpacking Debian's rustc $rust_version and its library sources into $prefix" >&2
(
  cd "$scratch"
  apt-get download rustc-web "libstd-rust-web-$rust_version" libstd-rust-web-dev rust-web-src >&2
)
rm -rf "$prefix.partial"
mkdir -p "$prefix.partial"
for deb in "$scratch"/*.deb; do
  dpkg -x "$deb" "$prefix.partial"
done
rm -rf "$prefix"
mv "$prefix.partial" "$prefix"
echo "$prefix"
