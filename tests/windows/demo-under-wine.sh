#!/usr/bin/env bash
# The Windows build of clinicsync runs the README's demo under Wine: two
# sites set up, edit concurrently, sync through the folder and converge.
# Needs the x86_64-pc-windows-gnu target, mingw-w64's gcc and wine64.
set -euo pipefail
cd "$(dirname "$0")/../.."
exe=target/x86_64-pc-windows-gnu/release/clinicsync.exe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
# A prefix of its own, with the one DLL Wine 8 lacks.
wineboot --init >/dev/null 2>&1 || true
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  tests/windows/bcryptprimitives.c -ladvapi32
wine "$exe" --version
out=$(wine "$exe" demo "Z:${work//\//\\}\\demo" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
grep -q "^Converged: both sites hold the same" <<<"$out"
