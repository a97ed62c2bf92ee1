#!/usr/bin/env bash
# Vendored from the team's real-client test harness so that CI, which clones
# only this repository, has it. Keep in step with the original.
# rclone-bisync.sh - a second REAL transport: rclone bisync (Debian bookworm:
# rclone 1.60.x) between local folders, with the same BASE/siteI/folder layout
# as syncthing-pair.sh. Nothing runs in the background: each `sync` is one
# bisync run (like a Dropbox/Drive client doing one reconciliation pass).
#
# Usage:
#   rclone-bisync.sh up     BASE [N]     create BASE/siteI/folder (I=1..N, default 2) and do the
#                                        initial `--resync` of site1 with every other site
#   rclone-bisync.sh sync   BASE [I...]  one bisync round between site1 and each listed site
#                                        (default: all). Sites not listed stay "offline". With more
#                                        than one site listed, the round runs twice (star via site1)
#                                        so every listed site sees every other's changes.
#   rclone-bisync.sh folder BASE I       print the folder path of site I
#   rclone-bisync.sh down   BASE         no-op (nothing runs in the background); kept for symmetry
#
# Conflicts (rclone 1.60): when a file changed on both sides since the last run, bisync
# renames BOTH copies to NAME..path1 and NAME..path2 (path1 = site1 here), copies both
# to both sides, and NAME itself disappears.
#
# Each folder holds a marker file .rclone-bisync-marker (bisync 1.60 aborts on an
# empty folder listing); leave it in place.
#
# Environment: RCLONE_BIN (default rclone), RCLONE_BISYNC_ARGS (extra flags, e.g. -v).
set -euo pipefail

PROG="$(basename "$0")"
RCLONE="${RCLONE_BIN:-rclone}"
MARKER=".rclone-bisync-marker"

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit "${1:-2}"; }

set_base() {
  [ -n "${1-}" ] || usage
  mkdir -p "$1"
  BASE="$(cd "$1" && pwd -P)"
  STATE="$BASE/.rclone-bisync"
}

require_state() {
  [ -f "$STATE/count" ] || die "no rclone harness in $BASE (run: $PROG up $BASE)"
  COUNT="$(cat "$STATE/count")"
}

check_index() {
  [[ "${1-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$COUNT" ] || die "site index must be 1..$COUNT, got '${1-}'"
}

# bisync_pair I [--resync] : bisync site1 <-> siteI, workdir per pair, log appended to STATE/rclone.log
bisync_pair() {
  local i="$1"
  shift
  local work="$STATE/work-1-$i"
  mkdir -p "$work"
  local extra=()
  # shellcheck disable=SC2206
  [ -n "${RCLONE_BISYNC_ARGS-}" ] && extra=($RCLONE_BISYNC_ARGS)
  # --config /dev/null: no user config, local paths only.
  # --force: small test folders would otherwise trip the "all files changed" safety abort.
  if ! "$RCLONE" --config /dev/null bisync "$BASE/site1/folder" "$BASE/site$i/folder" \
    --workdir "$work" --force -v "$@" "${extra[@]}" >>"$STATE/rclone.log" 2>&1; then
    tail -n 20 "$STATE/rclone.log" >&2
    die "rclone bisync site1 <-> site$i failed (full log: $STATE/rclone.log; bisync 1.60 then needs a --resync: '$PROG up' on a fresh BASE)"
  fi
}

cmd_up() {
  set_base "${1-}"
  local n="${2:-2}" i
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && [ "$n" -le 9 ] || die "N must be 2..9, got '$n'"
  command -v "$RCLONE" >/dev/null || die "rclone not found (apt-get install -y rclone)"
  [ ! -e "$STATE" ] || die "$BASE already holds an rclone harness; use a fresh BASE"
  mkdir -p "$STATE"
  echo "$n" >"$STATE/count"
  COUNT="$n"
  for ((i = 1; i <= n; i++)); do mkdir -p "$BASE/site$i/folder"; done
  # bisync 1.60 refuses to run against an empty prior listing ("Empty prior Path1
  # listing ... Must run --resync"), so every folder keeps one marker file
  # (like Syncthing's .stfolder). Do not delete it in tests.
  [ -e "$BASE/site1/folder/$MARKER" ] || echo "realsync rclone-bisync marker - keep" >"$BASE/site1/folder/$MARKER"
  for ((i = 2; i <= n; i++)); do bisync_pair "$i" --resync; done
  log "rclone bisync harness ready: $n sites under $BASE (rclone $("$RCLONE" version 2>/dev/null | sed -n 1p | awk '{print $2}'))"
}

cmd_sync() {
  set_base "${1-}"
  require_state
  shift
  local sites=() i
  if [ "$#" -gt 0 ]; then
    for i in "$@"; do check_index "$i"; [ "$i" -ne 1 ] && sites+=("$i"); done
  else
    for ((i = 2; i <= COUNT; i++)); do sites+=("$i"); done
  fi
  [ "${#sites[@]}" -gt 0 ] || die "nothing to sync: list at least one site other than 1"
  local rounds=1
  [ "${#sites[@]}" -gt 1 ] && rounds=2
  local r
  for ((r = 1; r <= rounds; r++)); do
    for i in "${sites[@]}"; do bisync_pair "$i"; done
  done
}

cmd_folder() {
  set_base "${1-}"
  require_state
  check_index "${2-}"
  printf '%s\n' "$BASE/site$2/folder"
}

case "${1-}" in
  up) shift; cmd_up "$@" ;;
  sync) shift; cmd_sync "$@" ;;
  folder) shift; cmd_folder "$@" ;;
  down) exit 0 ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac
