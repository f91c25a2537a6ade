#!/usr/bin/env bash
# demo.sh - the one-command live demo: a mail stack, the exporter, Prometheus with the
# shipped rules and Alertmanager wired back to the exporter, all on 127.0.0.1.
#
# Usage: scripts/demo.sh up|down|status
#        scripts/demo.sh break|fix postfix|queue|cert
#
#   up        install the stack's Debian packages when missing (scripts/teststack.sh
#             install), start the demo stack, start the exporter with
#             examples/demo.yml, load the rules of rules/ into the demo Prometheus
#             (every `for:` shortened, see DEMO_FOR), point the demo Alertmanager at
#             the exporter's webhook, wait until Prometheus scrapes the exporter,
#             and print the URLs.  Idempotent: what runs already is kept (the
#             exporter re-reads its configuration).
#   down      stop what "up" started (pid files in the demo directory only): the
#             exporter and the demo stack.  Never the test stack, never a system
#             service.  The demo directory stays (incident history included) until
#             you remove it.
#   status    one line per part; exit 0 iff all are up.
#   break postfix   stop the demo Postfix          fix postfix   start it again
#   break queue     put N messages (MCE_DEMO_QUEUE_MESSAGES, default 50) in the
#                   deferred queue: mail to elsewhere.test goes to the stack's dead
#                   relay and stays deferred      fix queue     delete them
#   break cert      make the demo Postfix serve its expired certificate (postconf +
#                   postfix reload)              fix cert      serve the valid one
#
# Environment:
#   MCE_DEMO_DIR   demo directory (default /tmp/mce-demo): the stack (stack/), the
#                  exporter's pid file, log and storage (data/), the secrets/ copied
#                  from the stack, the backup file of the demo dataset (backups/).
#                  An absolute path made of [A-Za-z0-9._/-].
#   MCE_DEMO_FOR   the `for:` of every alert in the demo's rules (default 30s).
#   PYTHON         the Python that runs the exporter (default: python3 on PATH).  When
#                  it cannot import the exporter, the demo installs it into a venv in
#                  $MCE_DEMO_DIR/venv (pip install -e of this checkout).
#
# Ports (127.0.0.1 only; the test stack's ports + 1000, MCE_STACK_PORT_OFFSET=1000 of
# scripts/teststack.sh, so the demo runs beside the test suite's stack):
#   11587 exporter   30090 Prometheus   30093 Alertmanager   3525 Postfix (port 25 role)
#   3587 submission  3465 smtps  3143 IMAP  3993 IMAPS  3053 Unbound  3999 dead relay
# examples/demo.yml names these ports, so they are fixed.
#
# Needs root (the stack starts Postfix and Dovecot).  Sends nothing off the box.

set -euo pipefail

# The Python that has the exporter, found before sbin goes first on PATH (pyenv, venvs).
PY=${PYTHON:-$(command -v python3 || echo python3)}
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
export LC_ALL=C
umask 022

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
TESTSTACK="$SCRIPT_DIR/teststack.sh"
CONFIG="$REPO/examples/demo.yml"

DEMO_DIR=${MCE_DEMO_DIR:-/tmp/mce-demo}
DEMO_FOR=${MCE_DEMO_FOR:-30s}
QUEUE_MESSAGES=${MCE_DEMO_QUEUE_MESSAGES:-50}
# MailQueueBacklog fires above this many deferred messages in the demo (500 in rules/).
BACKLOG_THRESHOLD=20
PORT_OFFSET=1000
HOST=127.0.0.1
EXPORTER_PORT=11587
PROM_PORT=$((29090 + PORT_OFFSET))
AM_PORT=$((29093 + PORT_OFFSET))
SMTP_PORT=$((2525 + PORT_OFFSET))
WAIT=60

EXPORTER_URL="http://$HOST:$EXPORTER_PORT"
PROM_URL="http://$HOST:$PROM_PORT"
AM_URL="http://$HOST:$AM_PORT"

STACK_DIR="$DEMO_DIR/stack"
SECRETS="$DEMO_DIR/secrets"
BACKUPS="$DEMO_DIR/backups"
EXPORTER_PID="$DEMO_DIR/exporter.pid"
EXPORTER_LOG="$DEMO_DIR/exporter.log"
EXPORTER_DATA="$DEMO_DIR/data"
MARKER="$DEMO_DIR/.mce-demo"
PF_ETC="$STACK_DIR/postfix/etc"
CERTS="$STACK_DIR/certs"
PROM_RULES="$STACK_DIR/prometheus/rules"
PROM_TARGETS="$STACK_DIR/prometheus/targets"
AM_CONF="$STACK_DIR/alertmanager/alertmanager.yml"

export MCE_DEMO_DIR="$DEMO_DIR" MCE_STACK_DIR="$STACK_DIR" MCE_STACK_PORT_OFFSET="$PORT_OFFSET"
export MCE_WEBHOOK_URL="$EXPORTER_URL/alertmanager"

log() { printf 'demo: %s\n' "$*" >&2; }
die() {
    printf 'demo: ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '4,5p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_root() {
    [[ $(id -u) -eq 0 ]] ||
        die "the demo starts its own Postfix and Dovecot, which needs root: run 'sudo make demo' (or: sudo $0 $*)"
}

check_demo_dir() {
    [[ $DEMO_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || die "MCE_DEMO_DIR must be an absolute path of [A-Za-z0-9._/-]: $DEMO_DIR"
    case "${DEMO_DIR%/}" in
        "" | /tmp | /var | /etc | /usr | /root | /home | /tmp/mce-teststack) die "refusing to use $DEMO_DIR as demo dir" ;;
    esac
    if [[ -d $DEMO_DIR && -n $(ls -A "$DEMO_DIR") && ! -e $MARKER ]]; then
        die "$DEMO_DIR is not empty and was not made by this script (no $(basename "$MARKER")); choose another MCE_DEMO_DIR"
    fi
}

# Postfix and Dovecot run as their own users: they must reach the stack through every
# parent directory (pytest's and mktemp -d's private directories are mode 0700).
check_traversable() {
    local d=$DEMO_DIR
    while [[ $d != / ]]; do
        d=$(dirname "$d")
        if [[ -d $d ]] && [[ $(stat -c '%A' "$d") != ?????????[xt] ]]; then
            die "$d is not searchable by other users (mode $(stat -c '%a' "$d")); Postfix and Dovecot could not reach $DEMO_DIR: choose another MCE_DEMO_DIR"
        fi
    done
}

# Serialise the demo commands of concurrent callers (fd 8, released on exit).  A new
# demo directory gets the marker that later runs (and check_demo_dir) look for.
take_lock() {
    if [[ ! -e $MARKER ]]; then
        mkdir -p "$DEMO_DIR"
        : >"$MARKER"
    fi
    exec 8>>"$DEMO_DIR/demo.lock"
    flock -w 300 8 || die "another demo.sh holds $DEMO_DIR/demo.lock"
}

stack() { bash "$TESTSTACK" "$@" 8>&-; }

# http METHOD URL [BODY]: print the body of a 2xx answer; fail otherwise.  No proxies.
http() {
    "$PY" - "$@" <<'PY'
import sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(urllib.request.Request(url, data=data, method=method), timeout=5) as resp:
        sys.stdout.write(resp.read().decode())
except Exception as exc:
    sys.stderr.write(f"{method} {url}: {exc}\n")
    sys.exit(1)
PY
}

# wait_for DESCRIPTION COMMAND...: retry for $WAIT seconds.
wait_for() {
    local desc=$1 deadline=$((SECONDS + WAIT))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${WAIT}s waiting for $desc"
        sleep 0.5
    done
}

# The exporter's pid, if the process in the pid file is alive and ours (its command
# line names this demo directory).
exporter_pid() {
    local pid
    [[ -r $EXPORTER_PID ]] || return 1
    pid=$(tr -dc '0-9' <"$EXPORTER_PID")
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--storage.path=$EXPORTER_DATA" || return 1
    printf '%s\n' "$pid"
}

port_listening() {
    local want
    want=$(printf '0100007F:%04X' "$1")
    awk -v want="$want" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}

# ---------------------------------------------------------------------------------------
# up

has_exporter() { "$1" -c 'import exporter, aiohttp, yaml' 2>/dev/null; }

# Use $PY if it has the exporter, else a venv in the demo directory (made on first use:
# Debian's own python3 refuses system-wide pip installs).
ensure_python() {
    local venv="$DEMO_DIR/venv"
    has_exporter "$PY" && return 0
    if ! has_exporter "$venv/bin/python"; then
        log "$PY cannot import the exporter: installing it into $venv"
        if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
            apt-get install -y --no-install-recommends python3-venv 1>&2 ||
                die "could not install python3-venv; install the exporter yourself: pip install -e $REPO"
        fi
        "$PY" -m venv "$venv" || die "python3 -m venv $venv failed"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO" ||
            die "could not install the exporter into $venv; run: $venv/bin/pip install -e $REPO"
    fi
    PY="$venv/bin/python"
}

write_secrets() {
    mkdir -p "$SECRETS" "$BACKUPS"
    chmod 0700 "$SECRETS"
    "$PY" - "$STACK_DIR/stack.json" "$SECRETS" <<'PY'
import json, os, sys
users = json.load(open(sys.argv[1]))["users"]
for address, password in users.items():
    path = os.path.join(sys.argv[2], address.split("@")[0] + ".password")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
PY
    if [[ ! -s $SECRETS/webhook.token ]]; then
        (umask 077 && openssl rand -hex 24 >"$SECRETS/webhook.token")
    fi
    # the demo dataset's "nightly backup"
    touch "$BACKUPS/mailstore.tar"
}

write_rules() {
    [[ $DEMO_FOR =~ ^[1-9][0-9]*[smh]$ ]] || die "MCE_DEMO_FOR: expected a duration like 30s, 2m or 1h, got \"$DEMO_FOR\""
    "$PY" - "$REPO/rules/generate.py" "$PROM_RULES" "$DEMO_FOR" "$BACKLOG_THRESHOLD" <<'PY'
import dataclasses, importlib.util, sys
from pathlib import Path

generate, out_dir, for_, backlog = sys.argv[1:]
spec = importlib.util.spec_from_file_location("mce_rules_generate", generate)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
settings = dataclasses.replace(module.SETTINGS, for_override=for_, backlog_messages=int(backlog))
# good.test publishes an _mta-sts TXT record but the demo serves no policy for it: that alert
# keeps its shipped for: (30m), or it would fire at once and keep the inbound incident open.
KEEP = frozenset({"MailMtaStsPolicyUnreachable"})
settings = dataclasses.replace(settings, for_override_except=KEEP)
for name, text in module.rule_texts(settings).items():
    header = f"# Generated by scripts/demo.sh for the demo only: every for: is {for_} except {sorted(KEEP)}.\n"
    Path(out_dir, name).write_text(header + text)
PY
    promtool check rules "$PROM_RULES"/*.yml >"$DEMO_DIR/promtool.log" 2>&1 ||
        die "promtool rejected the demo rules: see $DEMO_DIR/promtool.log"
    printf '[{"targets": ["%s:%s"]}]\n' "$HOST" "$EXPORTER_PORT" >"$PROM_TARGETS/demo.json"
}

write_alertmanager() {
    cat >"$AM_CONF" <<EOF
# Generated by scripts/demo.sh: every alert goes to the demo exporter's incident
# tracking, at once.  A production setup: examples/alertmanager.yml.
route:
  receiver: mail-continuity-exporter
  group_by: ["..."]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: mail-continuity-exporter
    webhook_configs:
      - url: "$EXPORTER_URL/alertmanager"
        send_resolved: true
        max_alerts: 0
        http_config:
          authorization:
            type: Bearer
            credentials_file: "$SECRETS/webhook.token"
EOF
    amtool check-config "$AM_CONF" >"$DEMO_DIR/amtool.log" 2>&1 ||
        die "amtool rejected $AM_CONF: see $DEMO_DIR/amtool.log"
}

start_exporter() {
    local out
    out=$("$PY" -m exporter --config.check --config.file="$CONFIG" 2>&1) || die "$CONFIG does not load:"$'\n'"$out"
    if exporter_pid >/dev/null; then
        log "exporter already running: reloading its configuration"
        http POST "$EXPORTER_URL/-/reload" >/dev/null || die "the exporter refused to reload: see $EXPORTER_LOG"
        return 0
    fi
    if port_listening "$EXPORTER_PORT"; then
        die "something else listens on $HOST:$EXPORTER_PORT; stop it first (the demo's ports are fixed)"
    fi
    log "starting the exporter on $EXPORTER_URL (log: $EXPORTER_LOG)"
    mkdir -p "$EXPORTER_DATA"
    # shellcheck disable=SC2016  # $$ expands in the inner shell
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$EXPORTER_PID" "$PY" -m exporter \
        --config.file="$CONFIG" --web.listen-address="$HOST:$EXPORTER_PORT" \
        --storage.path="$EXPORTER_DATA" </dev/null >>"$EXPORTER_LOG" 2>&1 8>&- &
    wait_for "the exporter's /-/ready (see $EXPORTER_LOG)" http GET "$EXPORTER_URL/-/ready"
}

target_up() {
    http GET "$PROM_URL/api/v1/targets?state=active" | "$PY" -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
sys.exit(0 if targets and all(t["health"] == "up" for t in targets) else 1)'
}

rules_loaded() {
    http GET "$PROM_URL/api/v1/rules" | "$PY" -c '
import json, sys
files = {g["file"] for g in json.load(sys.stdin)["data"]["groups"]}
sys.exit(0 if len([f for f in files if f.startswith(sys.argv[1])]) == 3 else 1)' "$PROM_RULES/"
}

cmd_up() {
    ensure_python
    stack install 1>&2
    log "starting the demo stack in $STACK_DIR (ports: the test stack's + $PORT_OFFSET)"
    stack up 1>&2
    write_secrets
    write_rules
    write_alertmanager
    start_exporter
    http POST "$AM_URL/-/reload" >/dev/null || die "Alertmanager refused its new configuration: see $AM_CONF"
    http POST "$PROM_URL/-/reload" >/dev/null || die "Prometheus refused to reload"
    wait_for "Prometheus to load the demo rules" rules_loaded
    wait_for "Prometheus to scrape the exporter (see $PROM_URL/targets)" target_up
    print_urls
}

print_urls() {
    cat <<EOF

The demo is up.  Everything listens on 127.0.0.1 only.

  Exporter status page   $EXPORTER_URL/
  Exporter metrics       $EXPORTER_URL/metrics
  Prometheus targets     $PROM_URL/targets
  Prometheus alerts      $PROM_URL/alerts
  Alertmanager           $AM_URL/

NOTE: the demo's alert rules are those of rules/ with every \`for:\` shortened to
$DEMO_FOR (MailMxDown waits 5m in the real rules) and MailQueueBacklog at $BACKLOG_THRESHOLD
messages (500), so that alerts fire within a minute.  Do not copy them from
$PROM_RULES: use rules/*.rules.yml.

Dashboards: import dashboards/*.json into Grafana with Prometheus $PROM_URL as the data
source, or run the containerised setup of deploy/docker-compose.yml.

What to try next (then watch the alerts and the status page's "Open incidents"):
  make demo-break-postfix   stop Postfix: MailMxDown, MailSmtpEndpointDown fire in ~1 minute
  make demo-fix-postfix     start it again: the alerts resolve, the incidents close (MTTR)
  make demo-break-queue     $QUEUE_MESSAGES deferred messages: MailQueueBacklog
  make demo-break-cert      Postfix serves an expired certificate: MailTlsCertificate*
  make demo-fix-queue, make demo-fix-cert, make demo-status
  make demo-down            stop everything the demo started
Walk-through: docs/demo.md
EOF
}

# ---------------------------------------------------------------------------------------
# down, status

stop_exporter() {
    local pid i
    pid=$(exporter_pid) || {
        rm -f "$EXPORTER_PID"
        return 0
    }
    log "stopping the exporter (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "the exporter did not exit, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$EXPORTER_PID"
}

cmd_down() {
    if [[ ! -f $STACK_DIR/.mce-teststack ]] && ! exporter_pid >/dev/null; then
        log "no demo in $DEMO_DIR, nothing to do"
        return 0
    fi
    stop_exporter
    stack down 1>&2
    log "demo down; its files stay in $DEMO_DIR (remove the directory to forget its incidents)"
}

cmd_status() {
    local rc=0
    stack status || rc=1
    if exporter_pid >/dev/null && http GET "$EXPORTER_URL/-/ready" >/dev/null 2>&1; then
        printf '%-13s %s\n' exporter up
    else
        printf '%-13s %s\n' exporter down
        rc=1
    fi
    if [[ -r $PF_ETC/main.cf ]] && grep -q '^smtpd_tls_cert_file = .*/expired-chain.pem$' "$PF_ETC/main.cf"; then
        printf '%-13s %s\n' certificate "expired (scripts/demo.sh fix cert)"
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------------------
# break / fix

need_stack() {
    [[ -f $STACK_DIR/stack.json ]] || die "the demo is not up: run 'make demo' first"
}

set_postfix_cert() {
    postconf -c "$PF_ETC" -e "smtpd_tls_cert_file = $CERTS/$1-chain.pem" "smtpd_tls_key_file = $CERTS/$1.key"
    if postfix -c "$PF_ETC" status >/dev/null 2>&1; then
        postfix -c "$PF_ETC" reload 2>&1 | sed 's/^/demo: /' >&2
    fi
}

fill_queue() {
    if [[ ! $QUEUE_MESSAGES =~ ^[0-9]{1,4}$ ]] || ((QUEUE_MESSAGES < 1 || QUEUE_MESSAGES > 1000)); then
        die "MCE_DEMO_QUEUE_MESSAGES: expected 1 to 1000, got \"$QUEUE_MESSAGES\""
    fi
    log "sending $QUEUE_MESSAGES messages to elsewhere.test; the stack relays them to a dead port"
    "$PY" - "$HOST" "$SMTP_PORT" "$QUEUE_MESSAGES" <<'PY'
import smtplib, sys
from email.message import EmailMessage

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with smtplib.SMTP(host, port, timeout=10) as smtp:
    smtp.ehlo("demo.example.test")
    for i in range(count):
        msg = EmailMessage()
        msg["From"] = "ops@example.test"
        msg["To"] = f"user{i}@elsewhere.test"
        msg["Subject"] = f"demo backlog {i}"
        msg.set_content("A message that cannot leave: the demo's relay host is a dead port.\n")
        smtp.send_message(msg)
PY
}

cmd_break() {
    need_stack
    case "$1" in
        postfix) stack stop postfix 1>&2 ;;
        queue) fill_queue ;;
        cert) set_postfix_cert expired ;;
        *) die "unknown breakage '$1' (expected postfix, queue or cert)" ;;
    esac
    log "broke $1; watch $PROM_URL/alerts and $EXPORTER_URL/ (undo: scripts/demo.sh fix $1)"
}

cmd_fix() {
    need_stack
    case "$1" in
        postfix) stack start postfix 1>&2 ;;
        queue) postsuper -c "$PF_ETC" -d ALL 2>&1 | sed 's/^/demo: /' >&2 ;;
        cert) set_postfix_cert valid ;;
        *) die "unknown breakage '$1' (expected postfix, queue or cert)" ;;
    esac
    log "fixed $1"
}

main() {
    [[ $# -ge 1 ]] || usage
    check_demo_dir
    case "$1" in
        up | down)
            [[ $# -eq 1 ]] || usage
            need_root "$@"
            [[ $1 == down ]] || check_traversable
            take_lock
            "cmd_$1"
            ;;
        status) cmd_status ;;
        break | fix)
            [[ $# -eq 2 ]] || usage
            need_root "$@"
            take_lock
            "cmd_$1" "$2"
            ;;
        *) usage ;;
    esac
}

main "$@"
