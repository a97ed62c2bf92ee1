#!/usr/bin/env bash
# Type-checks and lints clinicsync for macOS (aarch64-apple-darwin) on a
# machine without Apple's SDK. The Rust code is checked in full; the C parts
# of three dependencies (ring, SQLite, mimalloc) cannot be compiled without
# the SDK's headers, and `cargo check` does not link, so their build scripts
# are given a compiler that only writes empty objects. What this proves: the
# crate and its cfg(unix)/cfg(target_os) code compile for macOS.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=aarch64-apple-darwin
rustup target add "$target" >/dev/null
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cat >"$stub/cc" <<'CC'
#!/bin/sh
# Writes an empty object wherever `-o` points and accepts every flag; asked
# which compiler it is (cc-rs preprocesses a file of pragmas and tries a
# cl-style flag), says clang.
case " $* " in
  *" -E "*) echo '#pragma message "clang"'; exit 0 ;;
  *" -? "*) exit 1 ;;
esac
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
  esac
  shift
done
[ -n "$out" ] && : >"$out"
exit 0
CC
chmod +x "$stub/cc"
export CC_aarch64_apple_darwin="$stub/cc" AR_aarch64_apple_darwin=ar
cargo clippy --locked --target "$target" --lib --bins -- -D warnings
