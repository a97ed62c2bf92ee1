#!/usr/bin/env bash
# The Windows build of clinicsync under Wine, as a front-desk PC would run
# it: the README's demo; two sites set up on C:\ paths; the app (Python's
# sqlite3 here) adds and edits patients at both; syncs converge; a
# concurrent edit becomes a conflict record; a document travels with its
# row; a damaged file is skipped with
# a sentence naming it and the run is partial; `run` answers on 127.0.0.1;
# `service install` hands Task Scheduler a task it registers. Then the unit
# tests, built for Windows, run under Wine.
# Needs the x86_64-pc-windows-gnu target, mingw-w64's gcc, wine64, python3
# and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
exe=$root/target/x86_64-pc-windows-gnu/release/clinicsync.exe
work=$(mktemp -d)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
cleanup() {
  wineserver -k >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n-- %s\n' "$*"; }
fail() {
  echo "FAILED: $*" >&2
  exit 1
}

# A prefix of its own, with the one DLL Wine 8 lacks (Rust's std needs
# ProcessPrng from bcryptprimitives.dll).
wineboot --init >/dev/null 2>&1 || true
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  tests/windows/bcryptprimitives.c -ladvapi32
cs() { wine "$exe" "$@"; }
drive_c=$WINEPREFIX/drive_c
mkdir -p "$drive_c/clinic"

say "version and the README's demo"
cs --version
out=$(cs demo 'C:\clinic\demo' 2>&1) || { echo "$out"; fail "the demo"; }
grep -q "^Converged: both sites hold the same" <<<"$out" || { echo "$out"; fail "the demo did not converge"; }
echo "$out" | tail -1

say "two sites on C:\\ paths"
cs --db 'C:\clinic\front.db' init --folder 'C:\clinic\Shared Folder' --site-name 'Front desk'
cs --db 'C:\clinic\branch.db' init --folder 'C:\clinic\Shared Folder' --site-name 'Branch'

# The app: rows written with SQLite directly, as a clinic program does.
app() {
  python3 - "$drive_c/clinic/$1" "$2" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript(sys.argv[2])
db.commit()
PY
}
query() {
  python3 - "$drive_c/clinic/$1" "$2" <<'PY'
import sqlite3, sys
for row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]):
    print("|".join("" if v is None else str(v) for v in row))
PY
}
p1=00000001-0000-4000-8000-000000000001
p2=00000001-0000-4000-8000-000000000002
app front.db "INSERT INTO patients (id, family_name, given_name, phone) VALUES ('$p1', 'Okafor', 'Ada', '+1 555 0101');
  INSERT INTO appointments (id, patient_id, starts_at, duration_min, status) VALUES ('a-1', '$p1', '2026-12-04T09:00:00Z', 30, 'booked');"
app branch.db "INSERT INTO patients (id, family_name, given_name, phone) VALUES ('$p2', 'Lindqvist', 'Maja', '+1 555 0202');"
for db in front branch front; do cs --db "C:\\clinic\\$db.db" sync; done
both="SELECT id, family_name, phone FROM patients ORDER BY id"
[ "$(query front.db "$both")" = "$(query branch.db "$both")" ] || fail "the sites differ after sync"
[ "$(query branch.db "SELECT count(*) FROM appointments")" = 1 ] || fail "the appointment did not travel"
echo "converged: $(query front.db "SELECT count(*) FROM patients") patients at both"

say "a concurrent edit becomes a conflict record"
app front.db "UPDATE patients SET phone = '+1 555 0111' WHERE id = '$p1'"
app branch.db "UPDATE patients SET phone = '+1 555 0122' WHERE id = '$p1'"
for db in front branch front; do cs --db "C:\\clinic\\$db.db" sync; done
[ "$(query front.db "SELECT phone FROM patients WHERE id = '$p1'")" = \
  "$(query branch.db "SELECT phone FROM patients WHERE id = '$p1'")" ] || fail "the edit did not converge"
conflicts=$(cs --db 'C:\clinic\front.db' conflicts --json)
grep -q '"column": "phone"' <<<"$conflicts" || { echo "$conflicts"; fail "no conflict record"; }
echo "conflict recorded; both sites show $(query front.db "SELECT phone FROM patients WHERE id = '$p1'")"

say "a document travels with its row (a Windows path with backslashes)"
mkdir -p "$drive_c/clinic/front-docs/Letters" "$drive_c/clinic/branch-docs"
cs --db 'C:\clinic\front.db' settings 'documents_folder=C:\clinic\front-docs'
cs --db 'C:\clinic\branch.db' settings 'documents_folder=C:\clinic\branch-docs'
head -c 200000 /dev/urandom >"$drive_c/clinic/front-docs/Letters/referral.pdf"
app front.db "INSERT INTO documents (id, patient_id, file_name) VALUES ('d-1', '$p1', 'Letters\\referral.pdf');"
cs --db 'C:\clinic\front.db' sync
cs --db 'C:\clinic\branch.db' sync
cmp "$drive_c/clinic/front-docs/Letters/referral.pdf" "$drive_c/clinic/branch-docs/Letters/referral.pdf" ||
  fail "the document did not arrive byte for byte"
echo "the referral letter arrived at the branch byte for byte"

say "a damaged file is skipped with a sentence and the run is partial"
app front.db "UPDATE patients SET email = 'ada@example.org' WHERE id = '$p1'"
cs --db 'C:\clinic\front.db' sync
newest=$(ls -t "$drive_c/clinic/Shared Folder/log/"*/* | head -1)
truncate -s 40 "$newest"
set +e
cs --db 'C:\clinic\branch.db' sync
code=$?
set -e
[ "$code" = 3 ] || fail "a run over a damaged segment exited $code, not 3 (partial)"
name=$(basename "$newest")
cs --db 'C:\clinic\branch.db' log --last 1 | tee "$work/log.txt"
grep -q "$name" "$work/log.txt" || fail "Latest Logs do not name $name"

say "a device name in a path is refused; a folder deeper than 260 characters works"
set +e
out=$(cs --db 'C:\clinic\x.db' init --folder 'C:\clinic\CON\shared' 2>&1)
code=$?
set -e
echo "$out"
[ "$code" = 1 ] || fail "init with a device name in the folder's path exited $code"
grep -q '"CON" is a device name on Windows' <<<"$out" || fail "the refusal does not name CON"
[ ! -e "$drive_c/clinic/x.db" ] || fail "a refused init made the database"
deep='C:\clinic'
for i in $(seq 1 8); do deep="$deep\\level $i of the practice's shared documents"; done
deep="$deep\\ClinicSync"
echo "folder path: ${#deep} characters"
[ "${#deep}" -gt 300 ] || fail "the deep folder is only ${#deep} characters"
cs --db 'C:\clinic\deep-a.db' init --folder "$deep" --site-name 'Deep A'
cs --db 'C:\clinic\deep-b.db' init --folder "$deep" --site-name 'Deep B'
app deep-a.db "INSERT INTO patients (id, family_name, phone) VALUES ('$p1', 'Okafor', '+1 555 0101');"
cs --db 'C:\clinic\deep-a.db' sync
cs --db 'C:\clinic\deep-b.db' sync
[ "$(query deep-b.db "SELECT family_name FROM patients")" = Okafor ] || fail "nothing travelled through the deep folder"
find "$drive_c/clinic" -path '*ClinicSync/patients/*' -name '*.xml' | grep -q . || fail "no patient file in the deep folder"

say "run answers on 127.0.0.1"
wine "$exe" --db 'C:\clinic\front.db' run --web-port 0 >"$work/run.out" 2>"$work/run.err" &
link=""
for _ in $(seq 1 600); do
  link=$(sed -n 's/^Web page: //p' "$work/run.out" | tr -d '\r')
  [ -n "$link" ] && break
  kill -0 $! 2>/dev/null || { cat "$work/run.err"; fail "run exited"; }
  sleep 0.1
done
[ -n "$link" ] || { cat "$work/run.err"; fail "run printed no link within 60 s"; }
case "$link" in http://127.0.0.1:*) ;; *) fail "the page is not on loopback: $link" ;; esac
page=$(curl -sS -L -c "$work/jar" -b "$work/jar" --max-time 20 "$link")
grep -q "Sync Now" <<<"$page" || { echo "$page" | head -20; fail "the page did not answer"; }
status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 "${link%%/?token=*}/")
[ "$status" = 401 ] || fail "the page answered $status without its token"
echo "page answered at ${link%%/?token=*} (and refused a request without its token: $status)"
kill $! 2>/dev/null || true

say "service install hands Task Scheduler a task it registers"
# Wine starts its Task Scheduler service on demand only; wait until it runs.
for _ in $(seq 1 60); do
  started=$(wine net start schedule 2>&1 || true)
  echo "$started"
  case "$started" in *"started successfully"* | *"already running"*) break ;; esac
  sleep 1
done
cs --db 'C:\clinic\front.db' service install --dry-run | tee "$work/task.txt"
grep -q '<Arguments>--db C:\\clinic\\front.db run</Arguments>' "$work/task.txt" || fail "the task's arguments"
cs --db 'C:\clinic\front.db' service install
task=$(find "$drive_c/windows/system32/tasks/clinicsync" -type f | head -1)
[ -n "$task" ] || fail "Task Scheduler registered no task"
grep -q 'clinicsync for C:\\clinic\\front.db' "$task" || { cat "$task"; fail "the registered task is not ours"; }
# (Wine's schtasks has no /Query, so `service status` cannot see the task
# under Wine; on Windows it reads it back.) Uninstall removes it.
cs --db 'C:\clinic\front.db' service uninstall | tee "$work/uninstall.txt"
grep -q '^Removed a Task Scheduler task' "$work/uninstall.txt" || fail "uninstall did not say it removed the task"
[ ! -e "$task" ] || fail "the task is still registered after uninstall"

say "the unit tests, built for Windows, under Wine"
cd "$root"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine cargo test --locked --target x86_64-pc-windows-gnu --lib
echo "the Windows flow passed"
