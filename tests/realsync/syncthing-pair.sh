#!/usr/bin/env bash
# Vendored from the team's shared/realsync harness (see its README there) so that
# CI, which clones only this repository, has it. Keep in step with the original.
# syncthing-pair.sh - run N isolated, loopback-only Syncthing instances that
# share one folder (id "clinic"), so tests can use a REAL file-sync client as
# the transport between local folders.
#
# Usage:
#   syncthing-pair.sh up        BASE [N]     create + start N instances (default 2), wait until connected and idle
#   syncthing-pair.sh wait-idle BASE [SECS]  rescan, then wait until every online instance is idle and in sync
#   syncthing-pair.sh rescan    BASE [I]     synchronous rescan of the folder on instance I (default: all)
#   syncthing-pair.sh pause     BASE I       cut instance I off from all peers (offline laptop)
#   syncthing-pair.sh resume    BASE I       reconnect instance I and wait for the connections
#   syncthing-pair.sh down      BASE         stop the instances this script started (by recorded PID)
#   syncthing-pair.sh status    BASE         one line per instance: pid, alive, paused, folder state
#   syncthing-pair.sh info      BASE [I]     KEY=VALUE lines (GUI URL, API key, device id, folder, ...)
#   syncthing-pair.sh folder    BASE I       print the synced folder path of instance I
#
# Layout under BASE (created by `up`):
#   BASE/siteI/folder/          the synced folder (Syncthing folder id "clinic"; contains .stfolder)
#   BASE/siteI/home/            Syncthing home: config.xml, cert.pem, key.pem, database
#   BASE/siteI/syncthing.log    the instance's log
#   BASE/.realsync/             harness state: count, siteI.env, siteI.pid, siteI.paused
#
# Environment knobs (all optional):
#   SYNCTHING_BIN            syncthing binary (default: syncthing from PATH)
#   REALSYNC_FOLDER_ID       folder id (default: clinic)
#   REALSYNC_RESCAN_S        periodic full rescan interval in seconds (default: 10)
#   REALSYNC_WATCH_DELAY_S   fs watcher aggregation delay in seconds (default: 1)
#   REALSYNC_START_TIMEOUT   seconds to wait for REST API / connections (default: 60)
#   REALSYNC_IDLE_TIMEOUT    default timeout for wait-idle in seconds (default: 120)
#   REALSYNC_WAIT_RESCAN     1 (default) = wait-idle first forces a synchronous rescan on every instance;
#                            0 = rely on the fs watcher / periodic rescan only
#   REALSYNC_STABLE_POLLS    consecutive good polls (0.5 s apart) wait-idle requires (default: 3)
#   REALSYNC_API_KEY         use this API key for every instance (default: a random key per instance)
#
# Requires: syncthing (Debian bookworm: 1.19.x), curl, python3 (standard library only).
# Everything listens on 127.0.0.1 only; discovery, relays, NAT, usage reporting,
# crash reporting and upgrades are disabled. Never uses pkill/killall.
set -euo pipefail

PROG="$(basename "$0")"
SYNCTHING="${SYNCTHING_BIN:-syncthing}"
PYTHON="${PYTHON:-python3}"
FOLDER_ID="${REALSYNC_FOLDER_ID:-clinic}"
RESCAN_S="${REALSYNC_RESCAN_S:-10}"
WATCH_DELAY_S="${REALSYNC_WATCH_DELAY_S:-1}"
START_TIMEOUT="${REALSYNC_START_TIMEOUT:-60}"
IDLE_TIMEOUT="${REALSYNC_IDLE_TIMEOUT:-120}"
WAIT_RESCAN="${REALSYNC_WAIT_RESCAN:-1}"
STABLE_POLLS="${REALSYNC_STABLE_POLLS:-3}"

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
  exit "${1:-2}"
}

# ---------------------------------------------------------------------------
# Embedded Python helper (standard library only): config editing, free ports,
# JSON checks. Invoked as: py SUBCOMMAND ARGS...
# ---------------------------------------------------------------------------
read -r -d '' PY_HELPER <<'PYEOF' || true
import json, os, secrets, socket, sys, time, urllib.request, urllib.error

def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(str(p) for p in ports))

def configure(path, sync_port, gui_port, api_key, folder_id, folder_path, rescan_s, watch_delay_s, *devs):
    import copy
    import xml.etree.ElementTree as ET
    spec = {"sync_port": int(sync_port), "gui_port": int(gui_port), "api_key": api_key,
            "folder_id": folder_id, "folder_path": folder_path, "rescan_s": int(rescan_s),
            "watch_delay_s": int(watch_delay_s),
            "devices": [{"id": devs[k], "name": devs[k + 1], "address": devs[k + 2]}
                        for k in range(0, len(devs), 3)]}
    tree = ET.parse(path)
    root = tree.getroot()
    opts = root.find("options")
    if opts is None:
        opts = ET.SubElement(root, "options")

    def setopt(name, val):
        els = opts.findall(name)
        for extra in els[1:]:
            opts.remove(extra)
        el = els[0] if els else ET.SubElement(opts, name)
        el.text = str(val)

    nowhere = "http://127.0.0.1:9/disabled"   # loopback discard port: never used, never leaves the host
    setopt("listenAddress", "tcp://127.0.0.1:%d" % spec["sync_port"])
    setopt("globalAnnounceEnabled", "false")
    setopt("localAnnounceEnabled", "false")
    setopt("relaysEnabled", "false")
    setopt("natEnabled", "false")
    setopt("urAccepted", "-1")
    setopt("urSeen", "3")
    setopt("urURL", nowhere)
    setopt("autoUpgradeIntervalH", "0")
    setopt("upgradeToPreReleases", "false")
    setopt("releasesURL", nowhere)
    setopt("crashReportingEnabled", "false")
    setopt("crashReportingURL", nowhere)
    setopt("startBrowser", "false")
    setopt("announceLANAddresses", "false")
    setopt("stunKeepaliveStartS", "0")
    setopt("stunKeepaliveMinS", "0")
    setopt("restartOnWakeup", "false")
    setopt("setLowPriority", "false")
    setopt("reconnectionIntervalS", "5")   # 1.19 clamps lower values to 5
    setopt("progressUpdateIntervalS", "1")
    for el in opts.findall("minHomeDiskFree"):
        opts.remove(el)
    mh = ET.SubElement(opts, "minHomeDiskFree", {"unit": "%"})
    mh.text = "0"
    for el in opts.findall("unackedNotificationID"):
        opts.remove(el)

    gui = root.find("gui")
    if gui is None:
        gui = ET.SubElement(root, "gui")
    gui.set("enabled", "true")
    gui.set("tls", "false")
    for tag, val in (("address", "127.0.0.1:%d" % spec["gui_port"]), ("apikey", spec["api_key"])):
        el = gui.find(tag)
        if el is None:
            el = ET.SubElement(gui, tag)
        el.text = val

    defaults = root.find("defaults")
    dev_tmpl = defaults.find("device") if defaults is not None else None
    fold_tmpl = defaults.find("folder") if defaults is not None else None

    # Replace all top-level devices and folders with ours.
    for el in root.findall("device") + root.findall("folder"):
        root.remove(el)

    def make_device(dev):
        if dev_tmpl is not None:
            d = copy.deepcopy(dev_tmpl)
        else:
            d = ET.Element("device")
        d.set("id", dev["id"])
        d.set("name", dev["name"])
        d.set("compression", "metadata")
        d.set("introducer", "false")
        for el in d.findall("address"):
            d.remove(el)
        addr = ET.Element("address")
        addr.text = dev["address"]
        d.insert(0, addr)
        for tag, val in (("paused", "false"), ("autoAcceptFolders", "false")):
            el = d.find(tag)
            if el is None:
                el = ET.SubElement(d, tag)
            el.text = val
        return d

    insert_at = 0
    for dev in spec["devices"]:
        root.insert(insert_at, make_device(dev))
        insert_at += 1

    f = copy.deepcopy(fold_tmpl) if fold_tmpl is not None else ET.Element("folder")
    f.set("id", spec["folder_id"])
    f.set("label", spec["folder_id"])
    f.set("path", spec["folder_path"])
    f.set("type", "sendreceive")
    f.set("rescanIntervalS", str(spec["rescan_s"]))
    f.set("fsWatcherEnabled", "true")
    f.set("fsWatcherDelayS", str(spec["watch_delay_s"]))
    f.set("ignorePerms", "false")
    f.set("autoNormalize", "true")
    for el in f.findall("device"):
        f.remove(el)
    for i, dev in enumerate(spec["devices"]):
        d = ET.Element("device", {"id": dev["id"], "introducedBy": ""})
        ET.SubElement(d, "encryptionPassword")
        f.insert(i, d)

    def setf(tag, val, attrs=None):
        for el in f.findall(tag):
            f.remove(el)
        el = ET.SubElement(f, tag, attrs or {})
        el.text = val

    setf("maxConflicts", "-1")
    setf("minDiskFree", "0", {"unit": "%"})
    setf("paused", "false")
    setf("markerName", ".stfolder")
    root.insert(insert_at, f)

    if hasattr(ET, "indent"):
        ET.indent(tree, space="    ")
    tmp = path + ".tmp"
    tree.write(tmp, encoding="unicode")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)

def http(method, url, key, body=None, timeout=10):
    data = None if body is None else body.encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("X-API-Key", key)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy
    with opener.open(req, timeout=timeout) as r:
        raw = r.read().decode()
    return json.loads(raw) if raw.strip() else None

def parse_instances(args):
    # groups of 5: name url key device_id paused(0/1)
    out = []
    for i in range(0, len(args), 5):
        name, url, key, dev, paused = args[i:i + 5]
        out.append({"name": name, "url": url, "key": key, "id": dev, "paused": paused == "1"})
    return out

def check_connected(insts):
    """Links between two online instances must be up; links touching a paused one down."""
    problems = []
    for a in insts:
        try:
            conns = http("GET", a["url"] + "/rest/system/connections", a["key"])["connections"]
        except Exception as e:
            problems.append("%s: REST error %s" % (a["name"], e))
            continue
        for b in insts:
            if b is a:
                continue
            c = conns.get(b["id"], {}).get("connected", False)
            should = not a["paused"] and not b["paused"]
            if should and not c:
                problems.append("%s not connected to %s" % (a["name"], b["name"]))
            if not should and c:
                problems.append("%s still connected to %s" % (a["name"], b["name"]))
    return problems

def wait_connected(timeout, args):
    insts = parse_instances(args)
    deadline = time.time() + float(timeout)
    while True:
        problems = check_connected(insts)
        if not problems:
            return 0
        if time.time() > deadline:
            print("timed out after %ss waiting for connections: %s" % (timeout, "; ".join(problems)), file=sys.stderr)
            return 1
        time.sleep(0.5)

def idle_problems(folder, insts):
    problems = []
    online = [x for x in insts if not x["paused"]]
    problems += check_connected(insts)
    sig = {}
    for a in insts:
        try:
            st = http("GET", a["url"] + "/rest/db/status?folder=" + folder, a["key"])
        except Exception as e:
            problems.append("%s: REST error %s" % (a["name"], e))
            continue
        if st.get("state") != "idle":
            problems.append("%s: state=%s" % (a["name"], st.get("state")))
        if st.get("error"):
            problems.append("%s: folder error: %s" % (a["name"], st.get("error")))
        if a["paused"]:
            continue
        need = {k: st.get(k, 0) for k in ("needFiles", "needDirectories", "needSymlinks", "needDeletes", "needBytes")}
        if any(need.values()):
            problems.append("%s: needs %s" % (a["name"], need))
        if st.get("pullErrors", 0):
            problems.append("%s: pullErrors=%s" % (a["name"], st.get("pullErrors")))
        loc = tuple(st.get("local" + k, 0) for k in ("Files", "Directories", "Symlinks", "Bytes"))
        glo = tuple(st.get("global" + k, 0) for k in ("Files", "Directories", "Symlinks", "Bytes"))
        if loc != glo:
            problems.append("%s: local %s != global %s" % (a["name"], loc, glo))
        sig[a["name"]] = glo
        for b in online:
            if b is a:
                continue
            try:
                c = http("GET", a["url"] + "/rest/db/completion?folder=%s&device=%s" % (folder, b["id"]), a["key"])
            except Exception as e:
                problems.append("%s: REST error %s" % (a["name"], e))
                continue
            if c.get("completion", 0) < 100 or c.get("needBytes", 0) or c.get("needItems", 0) or c.get("needDeletes", 0):
                problems.append("%s sees %s at %.1f%% (needItems=%s needBytes=%s needDeletes=%s)" % (
                    a["name"], b["name"], c.get("completion", 0), c.get("needItems"), c.get("needBytes"), c.get("needDeletes")))
            rs = c.get("remoteState")
            if rs not in (None, "", "valid"):
                problems.append("%s sees %s remoteState=%s" % (a["name"], b["name"], rs))
    if len(set(sig.values())) > 1:
        problems.append("global views differ: %s" % sig)
    return problems

def wait_idle(folder, timeout, stable, args):
    insts = parse_instances(args)
    deadline = time.time() + float(timeout)
    good = 0
    problems = []
    while True:
        problems = idle_problems(folder, insts)
        good = good + 1 if not problems else 0
        if good >= int(stable):
            return 0
        if time.time() > deadline:
            print("timed out after %ss waiting for idle/in-sync: %s" % (timeout, "; ".join(problems)), file=sys.stderr)
            return 1
        time.sleep(0.5)

def status_line(folder, url, key):
    try:
        st = http("GET", url + "/rest/db/status?folder=" + folder, key, timeout=5)
        return "state=%s localFiles=%s globalFiles=%s needFiles=%s needBytes=%s" % (
            st.get("state"), st.get("localFiles"), st.get("globalFiles"), st.get("needFiles"), st.get("needBytes"))
    except Exception as e:
        return "REST unreachable (%s)" % e

def main(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "free-ports":
        free_ports(int(args[0]))
    elif cmd == "api-key":
        print(secrets.token_urlsafe(24))
    elif cmd == "configure":
        configure(*args)
    elif cmd == "listener-ok":
        # listener-ok ADDR < /rest/system/status  -> exit 0 if that listener runs without error
        st = json.load(sys.stdin).get("connectionServiceStatus", {}).get(args[0])
        return 0 if st is not None and not st.get("error") and st.get("lanAddresses") else 1
    elif cmd == "json-get":
        # json-get KEY < json  -> prints value
        print(json.load(sys.stdin).get(args[0], ""))
    elif cmd == "wait-connected":
        return wait_connected(args[0], args[1:])
    elif cmd == "wait-idle":
        return wait_idle(args[0], args[1], args[2], args[3:])
    elif cmd == "status-line":
        print(status_line(*args))
    else:
        print("unknown helper command " + cmd, file=sys.stderr)
        return 2
    return 0

sys.exit(main(sys.argv[1:]))
PYEOF

py() { "$PYTHON" -c "$PY_HELPER" "$@"; }

# curl wrapper: loopback only, never via a proxy.
api() { # api I METHOD PATH [BODY]
  local i="$1" method="$2" path="$3" body="${4-}"
  load_env "$i"
  local args=(-fsS --noproxy '*' --max-time "${API_MAX_TIME:-30}" -X "$method" -H "X-API-Key: $API_KEY")
  if [ -n "$body" ]; then args+=(-H 'Content-Type: application/json' --data "$body"); fi
  curl "${args[@]}" "$GUI_URL$path"
}

# ---------------------------------------------------------------------------
# State helpers
# ---------------------------------------------------------------------------
set_base() { # set_base BASE [create]
  [ -n "${1-}" ] || usage
  if [ "${2-}" = create ]; then mkdir -p "$1"; fi
  [ -d "$1" ] || die "no such directory: $1"
  BASE="$(cd "$1" && pwd -P)"
  STATE="$BASE/.realsync"
}

require_running() { # every instance process must still be alive
  local i
  for ((i = 1; i <= COUNT; i++)); do
    load_env "$i"
    pid_is_ours "$(pid_of "$i")" "$HOME_DIR" \
      || die "$NAME is not running (pid '$(pid_of "$i")'); see $LOG"
  done
}

require_state() {
  [ -f "$STATE/count" ] || die "no harness state in $BASE (run: $PROG up $BASE)"
  COUNT="$(cat "$STATE/count")"
}

check_index() {
  [[ "${1-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$COUNT" ] || die "instance index must be 1..$COUNT, got '${1-}'"
}

load_env() { # sets NAME HOME_DIR FOLDER LOG GUI_PORT SYNC_PORT GUI_URL API_KEY DEVICE_ID
  local f="$STATE/site$1.env"
  [ -f "$f" ] || die "missing $f"
  # shellcheck disable=SC1090
  . "$f"
}

pid_of() { cat "$STATE/site$1.pid" 2>/dev/null || true; }

# True if PID is alive (not a zombie) and is the syncthing we started for HOME_DIR.
pid_is_ours() {
  local pid="$1" home="$2"
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    local st
    st="$(sed -e 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)"
    [ "$st" != "Z" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--home=$home" || return 1
  fi
  return 0
}

instance_args() { # NAME URL KEY ID PAUSED for every instance (for the python helper)
  local i
  for ((i = 1; i <= COUNT; i++)); do
    load_env "$i"
    local paused=0
    [ -f "$STATE/site$i.paused" ] && paused=1
    printf '%s\n' "$NAME" "$GUI_URL" "$API_KEY" "$DEVICE_ID" "$paused"
  done
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
generate_home() { # generate_home HOME
  local home="$1" out
  if "$SYNCTHING" generate --help >/dev/null 2>&1; then
    out="$("$SYNCTHING" generate --home="$home" --no-default-folder --skip-port-probing 2>&1)" \
      || die "syncthing generate failed: $out"
  else
    out="$(STNODEFAULTFOLDER=1 "$SYNCTHING" -generate="$home" 2>&1)" || die "syncthing -generate failed: $out"
  fi
  [ -f "$home/cert.pem" ] && [ -f "$home/config.xml" ] || die "syncthing did not generate keys in $home: $out"
}

device_id_of() { # device_id_of HOME
  local id
  id="$("$SYNCTHING" serve --home="$1" --device-id 2>/dev/null || "$SYNCTHING" -home="$1" -device-id 2>/dev/null)" || true
  id="$(printf '%s' "$id" | tr -d '[:space:]')"
  [[ "$id" =~ ^[A-Z0-9]{7}(-[A-Z0-9]{7}){7}$ ]] || die "could not read device id from $1 (got '$id')"
  printf '%s' "$id"
}

start_instance() { # start_instance I
  local i="$1"
  load_env "$i"
  # No proxy variables: syncthing would dial peers through ALL_PROXY.
  # STMONITORED=yes: run the syncthing process itself, without the restart
  # monitor parent that 1.19 otherwise forks (so $! is the real process).
  env -u ALL_PROXY -u all_proxy -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy \
    STMONITORED=yes STNOUPGRADE=1 STNORESTART=1 STNODEFAULTFOLDER=1 \
    nohup "$SYNCTHING" serve --no-browser --no-restart --no-upgrade --no-default-folder \
    --home="$HOME_DIR" --logflags=3 </dev/null >>"$LOG" 2>&1 &
  local pid=$!
  echo "$pid" >"$STATE/site$i.pid"
}

# Direct children of PID (Linux /proc); used to also track a monitor's child.
children_of() {
  local pid="$1" f line fields
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$f" || continue
    read -r -a fields <<<"${line##*) }" # fields: state ppid ...
    if [ "${fields[1]-}" = "$pid" ]; then f="${f#/proc/}"; echo "${f%/stat}"; fi
  done
}

wait_api() { # wait_api I
  local i="$1" pid deadline out
  load_env "$i"
  pid="$(pid_of "$i")"
  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! pid_is_ours "$pid" "$HOME_DIR"; then
      echo "----- last lines of $LOG -----" >&2
      tail -n 30 "$LOG" >&2 || true
      die "syncthing for $NAME (pid $pid) exited during startup"
    fi
    out="$(API_MAX_TIME=2 api "$i" GET /rest/system/status 2>/dev/null || true)"
    if [ -n "$out" ] && printf '%s' "$out" | py listener-ok "$SYNC_ADDR" 2>/dev/null; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "----- last lines of $LOG -----" >&2
      tail -n 30 "$LOG" >&2 || true
      die "REST API of $NAME did not answer on $GUI_URL (or its listener $SYNC_ADDR did not start) within ${START_TIMEOUT}s"
    fi
    sleep 0.3
  done
  local myid
  myid="$(api "$i" GET /rest/system/status | py json-get myID)"
  [ "$myid" = "$DEVICE_ID" ] || die "$NAME answered with device id $myid, expected $DEVICE_ID (port clash?)"
  # If this syncthing build still forked a child (monitor mode), record it too.
  children_of "$pid" >"$STATE/site$i.childpids" || true
}

cmd_up() {
  set_base "${1-}" create
  local n="${2:-2}"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && [ "$n" -le 9 ] || die "N must be 2..9, got '$n'"
  command -v "$SYNCTHING" >/dev/null || die "syncthing not found (apt-get install -y syncthing)"
  command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
  command -v "$PYTHON" >/dev/null || die "python3 not found"
  if [ -e "$STATE" ]; then
    die "$BASE already holds a harness (.realsync exists); run '$PROG down $BASE' and use a fresh BASE"
  fi
  mkdir -p "$STATE"
  echo "$n" >"$STATE/count"
  COUNT="$n"
  # If anything below fails, stop whatever this call already started.
  UP_BASE="$BASE"
  trap 'rc=$?; if [ "$rc" -ne 0 ]; then log "up failed; stopping the instances it started"; cmd_down "$UP_BASE" || true; fi' EXIT

  local ports i
  read -r -a ports <<<"$(py free-ports $((2 * n)))"
  local ids=()
  for ((i = 1; i <= n; i++)); do
    local site="$BASE/site$i"
    [ ! -e "$site/home" ] || die "$site/home already exists; use a fresh BASE"
    mkdir -p "$site/folder/.stfolder" "$site/home"
    chmod 700 "$site/home"
    generate_home "$site/home"
    ids[i]="$(device_id_of "$site/home")"
    local key="${REALSYNC_API_KEY:-$(py api-key)}"
    local gui_port="${ports[$((2 * (i - 1)))]}" sync_port="${ports[$((2 * (i - 1) + 1))]}"
    {
      printf 'NAME=%q\n' "site$i"
      printf 'HOME_DIR=%q\n' "$site/home"
      printf 'FOLDER=%q\n' "$site/folder"
      printf 'LOG=%q\n' "$site/syncthing.log"
      printf 'GUI_PORT=%q\n' "$gui_port"
      printf 'SYNC_PORT=%q\n' "$sync_port"
      printf 'GUI_URL=%q\n' "http://127.0.0.1:$gui_port"
      printf 'SYNC_ADDR=%q\n' "tcp://127.0.0.1:$sync_port"
      printf 'API_KEY=%q\n' "$key"
      printf 'DEVICE_ID=%q\n' "${ids[i]}"
      printf 'FOLDER_ID=%q\n' "$FOLDER_ID"
    } >"$STATE/site$i.env"
  done

  # Every config lists all devices (self first) with explicit loopback addresses.
  for ((i = 1; i <= n; i++)); do
    load_env "$i"
    local devs=("${ids[i]}" "site$i" dynamic) j
    for ((j = 1; j <= n; j++)); do
      [ "$j" -eq "$i" ] && continue
      devs+=("${ids[j]}" "site$j" "$(load_env "$j"; echo "$SYNC_ADDR")")
    done
    py configure "$HOME_DIR/config.xml" "$SYNC_PORT" "$GUI_PORT" "$API_KEY" "$FOLDER_ID" "$FOLDER" \
      "$RESCAN_S" "$WATCH_DELAY_S" "${devs[@]}"
  done

  # Start one at a time and wait for each REST API and sync listener: the newly
  # started instance then dials the already-listening ones. (Syncthing 1.19
  # stalls ~20 s in the Hello exchange when two peers dial each other at the
  # same moment.)
  for ((i = 1; i <= n; i++)); do
    start_instance "$i"
    wait_api "$i"
    load_env "$i"
    log "$NAME up: pid $(pid_of "$i"), gui $GUI_URL, sync $SYNC_ADDR, folder $FOLDER"
  done
  local args=()
  mapfile -t args < <(instance_args)
  py wait-connected "$START_TIMEOUT" "${args[@]}" || die "instances did not connect to each other (see $BASE/site*/syncthing.log)"
  py wait-idle "$FOLDER_ID" "$START_TIMEOUT" "$STABLE_POLLS" "${args[@]}" || die "folder '$FOLDER_ID' did not become idle after start"
  trap - EXIT
  log "all $n instances connected and idle"
}

cmd_rescan() {
  set_base "${1-}"
  require_state
  require_running
  local i from=1 to="$COUNT"
  if [ -n "${2-}" ]; then check_index "$2"; from="$2"; to="$2"; fi
  for ((i = from; i <= to; i++)); do
    API_MAX_TIME="$IDLE_TIMEOUT" api "$i" POST "/rest/db/scan?folder=$FOLDER_ID" >/dev/null \
      || die "rescan of site$i failed"
  done
}

cmd_wait_idle() {
  set_base "${1-}"
  require_state
  local timeout="${2:-$IDLE_TIMEOUT}"
  require_running
  if [ "$WAIT_RESCAN" = 1 ]; then
    cmd_rescan "$BASE"
  fi
  local args=()
  mapfile -t args < <(instance_args)
  py wait-idle "$FOLDER_ID" "$timeout" "$STABLE_POLLS" "${args[@]}" \
    || die "wait-idle: instances not idle/in sync within ${timeout}s"
}

# Set device DEV paused/unpaused in instance I's config.
set_device_paused() { # set_device_paused I DEVICE_ID true|false
  local i="$1" dev="$2" val="$3"
  if api "$i" PATCH "/rest/config/devices/$dev" "{\"paused\":$val}" >/dev/null 2>&1; then
    return 0
  fi
  # Older REST API fallback.
  local ep=pause
  [ "$val" = false ] && ep=resume
  api "$i" POST "/rest/system/$ep?device=$dev" >/dev/null || die "could not $ep device $dev on site$i"
}

cmd_pause_resume() { # cmd_pause_resume pause|resume BASE I
  # A link I<->J is up iff neither I nor J is paused: pausing I pauses every
  # link of I (on both ends); resuming I re-enables only links to peers that
  # are not themselves paused.
  local what="$1"
  set_base "${2-}"
  require_state
  check_index "${3-}"
  require_running
  local i="$3" j val=true
  [ "$what" = resume ] && val=false
  local my_id
  my_id="$(load_env "$i"; echo "$DEVICE_ID")"
  for ((j = 1; j <= COUNT; j++)); do
    [ "$j" -eq "$i" ] && continue
    if [ "$what" = resume ] && [ -f "$STATE/site$j.paused" ]; then
      continue # peer is offline itself: keep that link down
    fi
    local peer_id
    peer_id="$(load_env "$j"; echo "$DEVICE_ID")"
    set_device_paused "$i" "$peer_id" "$val" # I stops/starts talking to J
    set_device_paused "$j" "$my_id" "$val"   # J stops/starts talking to I
  done
  if [ "$what" = pause ]; then
    touch "$STATE/site$i.paused"
  else
    rm -f "$STATE/site$i.paused"
  fi
  local args=()
  mapfile -t args < <(instance_args)
  py wait-connected "$START_TIMEOUT" "${args[@]}" \
    || die "connections did not reach the expected state after '$what site$i' within ${START_TIMEOUT}s"
  log "site$i ${what}d"
}

cmd_down() {
  [ -n "${1-}" ] || usage
  [ -d "$1" ] || { log "nothing to stop: $1 does not exist"; return 0; }
  set_base "$1"
  [ -f "$STATE/count" ] || { log "nothing to stop in $BASE"; return 0; }
  COUNT="$(cat "$STATE/count")"
  local i rc=0
  for ((i = 1; i <= COUNT; i++)); do
    [ -f "$STATE/site$i.env" ] || continue
    load_env "$i"
    local pid pids=() p any=0
    pid="$(pid_of "$i")"
    [ -n "$pid" ] && pids+=("$pid")
    if [ -f "$STATE/site$i.childpids" ]; then
      while read -r p; do [ -n "$p" ] && pids+=("$p"); done <"$STATE/site$i.childpids"
    fi
    for p in "${pids[@]}"; do pid_is_ours "$p" "$HOME_DIR" && any=1; done
    if [ "$any" = 0 ]; then
      rm -f "$STATE/site$i.pid" "$STATE/site$i.childpids"
      continue
    fi
    # Graceful shutdown through the REST API, then SIGTERM, then SIGKILL - always by PID.
    API_MAX_TIME=5 api "$i" POST /rest/system/shutdown >/dev/null 2>&1 || true
    wait_gone 10 "${pids[@]}" || {
      for p in "${pids[@]}"; do pid_is_ours "$p" "$HOME_DIR" && kill -TERM "$p" 2>/dev/null; done
      wait_gone 10 "${pids[@]}"
    } || {
      for p in "${pids[@]}"; do pid_is_ours "$p" "$HOME_DIR" && kill -KILL "$p" 2>/dev/null; done
      wait_gone 5 "${pids[@]}"
    } || true
    local left=()
    for p in "${pids[@]}"; do pid_is_ours "$p" "$HOME_DIR" && left+=("$p"); done
    if [ "${#left[@]}" -gt 0 ]; then
      log "could not stop $NAME (pid ${left[*]})"
      rc=1
    else
      log "$NAME stopped (pid ${pids[*]})"
      rm -f "$STATE/site$i.pid" "$STATE/site$i.childpids"
    fi
  done
  return "$rc"
}

# wait_gone SECS PID... : true once none of the PIDs is a live syncthing of ours.
wait_gone() {
  local secs="$1" deadline p alive
  shift
  deadline=$((SECONDS + secs))
  while :; do
    alive=0
    for p in "$@"; do pid_is_ours "$p" "$HOME_DIR" && alive=1; done
    [ "$alive" = 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

cmd_status() {
  set_base "${1-}"
  require_state
  local i
  for ((i = 1; i <= COUNT; i++)); do
    load_env "$i"
    local pid alive=no paused=no line="-"
    pid="$(pid_of "$i")"
    pid_is_ours "$pid" "$HOME_DIR" && alive=yes
    [ -f "$STATE/site$i.paused" ] && paused=yes
    [ "$alive" = yes ] && line="$(py status-line "$FOLDER_ID" "$GUI_URL" "$API_KEY")"
    echo "$NAME pid=${pid:--} alive=$alive paused=$paused $line"
  done
}

cmd_info() {
  set_base "${1-}"
  require_state
  local i from=1 to="$COUNT"
  if [ -n "${2-}" ]; then check_index "$2"; from="$2"; to="$2"; fi
  for ((i = from; i <= to; i++)); do
    [ "$from" != "$to" ] && echo "# site$i"
    cat "$STATE/site$i.env"
    printf 'PID=%q\n' "$(pid_of "$i")"
  done
}

cmd_folder() {
  set_base "${1-}"
  require_state
  check_index "${2-}"
  load_env "$2"
  printf '%s\n' "$FOLDER"
}

main() {
  local cmd="${1-}"
  shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    wait-idle) cmd_wait_idle "$@" ;;
    rescan) cmd_rescan "$@" ;;
    pause) cmd_pause_resume pause "$@" ;;
    resume) cmd_pause_resume resume "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    info) cmd_info "$@" ;;
    folder) cmd_folder "$@" ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
