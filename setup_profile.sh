#!/usr/bin/env bash
# Set up everything aiida-mad needs on a Debian/Ubuntu machine: Debian packages, the virtual environment, an AiiDA
# profile with a running daemon, codes and pseudopotentials. Idempotent: a second run changes nothing and says so.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILE="mad"
VENV="${MAD_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
USE_POSTGRES=0
USE_RABBITMQ=0
USE_SSSP=0
SSSP_ARCHIVE=""
SKIP_APT=0
START_DAEMON=1
EXTRA_APT=()

usage() {
    cat <<EOF
Usage: ./setup_profile.sh [OPTIONS]

Sets up aiida-mad: Debian packages, the virtual environment .venv, the AiiDA profile, codes, pseudopotentials and
the daemon. Every step is skipped when its result is already there, so running it twice is safe.

Options:
  --profile NAME         AiiDA profile name (default: mad)
  --postgres             PostgreSQL storage on the local cluster instead of SQLite (production style)
  --rabbitmq             RabbitMQ broker instead of ZeroMQ (production style)
  --sssp                 also install SSSP 1.2 PBEsol efficiency (needs the network)
  --sssp-archive PATH    install SSSP from an archive made with 'aiida-pseudo install sssp --download-only'
  --apt PACKAGE          one more Debian package to install (repeatable; used for test services)
  --skip-apt             do not install Debian packages (you provide pw.x yourself)
  --no-daemon            do not start the daemon
  -h, --help             show this help

Environment: AIIDA_PATH (default: $REPO/.aiida), MAD_VENV (default: $REPO/.venv), PYTHON (default: python3).
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; PROFILE="$2"; shift 2 ;;
        --postgres) USE_POSTGRES=1; shift ;;
        --rabbitmq) USE_RABBITMQ=1; shift ;;
        --sssp) USE_SSSP=1; shift ;;
        --sssp-archive) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; USE_SSSP=1; SSSP_ARCHIVE="$2"; shift 2 ;;
        --apt) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; EXTRA_APT+=("$2"); shift 2 ;;
        --skip-apt) SKIP_APT=1; shift ;;
        --no-daemon) START_DAEMON=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup_profile.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

export AIIDA_PATH="${AIIDA_PATH:-$REPO/.aiida}"
export PATH="$VENV/bin:$PATH"
CHANGED=0
STEP="start"
HINT=""

on_error() {
    local code=$?
    echo >&2
    echo "setup_profile.sh: step '$STEP' failed (exit code $code)." >&2
    [[ -n "$HINT" ]] && echo "What to do: $HINT" >&2
    echo "The steps before it are complete and usable; run ./setup_profile.sh again after fixing the problem." >&2
    exit "$code"
}
trap on_error ERR

step() { STEP="$1"; HINT="$2"; printf '\n== %s\n' "$STEP"; }
changed() { CHANGED=1; echo "  $*"; }
unchanged() { echo "  $* (already there)"; }
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi; }

# ---------------------------------------------------------------------------------------------------------------------
step "Debian packages" "install them by hand (apt-get install quantum-espresso libopenblas0-pthread ...) or pass --skip-apt"
PACKAGES=(quantum-espresso libopenblas0-pthread "${EXTRA_APT[@]}")
[[ $USE_POSTGRES -eq 1 ]] && PACKAGES+=(postgresql locales)
[[ $USE_RABBITMQ -eq 1 ]] && PACKAGES+=(rabbitmq-server)
if [[ $SKIP_APT -eq 1 ]]; then
    echo "  skipped (--skip-apt)"
else
    MISSING=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$package")
    done
    if [[ ${#MISSING[@]} -eq 0 ]]; then
        unchanged "${PACKAGES[*]}"
    else
        command -v apt-get >/dev/null || { echo "  no apt-get on this machine; missing: ${MISSING[*]}"; false; }
        [[ $EUID -eq 0 ]] || sudo -n true 2>/dev/null || { echo "  need root or password-less sudo for apt-get"; false; }
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
        changed "installed ${MISSING[*]}"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------------
step "Python environment" "check that $PYTHON is Python >= 3.11 with venv, and that PyPI is reachable"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "  $PYTHON is older than 3.11"; false; }
STAMP="$(cat "$REPO/pyproject.toml" "$REPO/constraints.txt" | sha256sum | cut -c1-16)-$("$PYTHON" -c 'import sys; print(sys.version_info[:2])' | tr -d ' (),')"
if [[ -f "$VENV/.mad-install-stamp" && "$(cat "$VENV/.mad-install-stamp")" == "$STAMP" ]]; then
    unchanged "$VENV with aiida-mad[train,tests,dev]"
else
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    # torch first and alone, pinned by the constraints file, so that nothing later pulls a CUDA build.
    "$VENV/bin/pip" install -q -c "$REPO/constraints.txt" torch
    "$VENV/bin/pip" install -q -c "$REPO/constraints.txt" -e "$REPO[train,tests,dev]"
    echo "$STAMP" > "$VENV/.mad-install-stamp"
    changed "installed aiida-mad[train,tests,dev] into $VENV"
fi
if ! grep -q 'aiida-mad: AIIDA_PATH' "$VENV/bin/activate"; then
    printf '\n# aiida-mad: AIIDA_PATH of the profile made by setup_profile.sh\nexport AIIDA_PATH="%s"\n' "$AIIDA_PATH" >> "$VENV/bin/activate"
    changed "'source $VENV/bin/activate' now also sets AIIDA_PATH=$AIIDA_PATH"
fi

# ---------------------------------------------------------------------------------------------------------------------
if [[ $USE_RABBITMQ -eq 1 ]]; then
    step "RabbitMQ" "see docs/production.md; check /var/log/rabbitmq and that no other broker holds port 5672"
    ADVANCED=/etc/rabbitmq/advanced.config
    # AiiDA processes may run for days: the default consumer timeout would make RabbitMQ drop their tasks.
    if ! grep -q 'consumer_timeout, undefined' "$ADVANCED" 2>/dev/null; then
        as_root mkdir -p /etc/rabbitmq
        echo '[{rabbit, [{consumer_timeout, undefined}]}].' | as_root tee "$ADVANCED" >/dev/null
        changed "wrote $ADVANCED (consumer_timeout undefined)"
    fi
    if as_root rabbitmqctl -q status >/dev/null 2>&1; then
        unchanged "rabbitmq-server running"
    else
        as_root rabbitmq-server -detached
        # `await_startup` fails at once while the Erlang node itself is still booting: poll, bounded.
        for _ in $(seq 120); do as_root rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
        as_root rabbitmqctl -q await_startup --timeout 60
        changed "started rabbitmq-server"
    fi
fi

if [[ $USE_POSTGRES -eq 1 ]]; then
    step "PostgreSQL" "see docs/production.md; check 'pg_lsclusters' and the cluster's log"
    if ! locale -a 2>/dev/null | grep -qi '^en_US.utf8$'; then
        as_root sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
        grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' | as_root tee -a /etc/locale.gen >/dev/null
        as_root locale-gen >/dev/null
        changed "generated the en_US.UTF-8 locale"
        RESTART_PG=1
    fi
    read -r PG_VERSION PG_CLUSTER <<<"$(pg_lsclusters -h | awk 'NR==1 {print $1, $2}')"
    [[ -n "${PG_VERSION:-}" ]] || { echo "  no PostgreSQL cluster found (pg_lsclusters)"; false; }
    if [[ "${RESTART_PG:-0}" -eq 1 ]] || ! pg_lsclusters -h | awk 'NR==1 {exit $4 != "online"}'; then
        as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart
        changed "started PostgreSQL $PG_VERSION/$PG_CLUSTER"
    else
        unchanged "PostgreSQL $PG_VERSION/$PG_CLUSTER online"
    fi
    PG_PASSWORD_FILE="$AIIDA_PATH/postgres-password"
    if [[ ! -s "$PG_PASSWORD_FILE" ]]; then
        mkdir -p "$AIIDA_PATH"
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$PG_PASSWORD_FILE")
        as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD '$(cat "$PG_PASSWORD_FILE")'"
        changed "set a password for the postgres role (kept in $PG_PASSWORD_FILE)"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------------
step "AiiDA profile '$PROFILE'" "read the message above; 'verdi -p $PROFILE status' shows what is wrong"
mkdir -p "$AIIDA_PATH"
if verdi profile show "$PROFILE" >/dev/null 2>&1; then
    unchanged "profile $PROFILE in $AIIDA_PATH"
else
    PRESTO=(verdi presto --non-interactive -p "$PROFILE")
    [[ $USE_RABBITMQ -eq 1 ]] || PRESTO+=(--use-zeromq)
    [[ $USE_POSTGRES -eq 1 ]] && PRESTO+=(--use-postgres --postgres-username postgres --postgres-password "$(cat "$PG_PASSWORD_FILE")")
    "${PRESTO[@]}"
    if [[ $USE_RABBITMQ -eq 1 ]]; then
        verdi config set warnings.rabbitmq_version False >/dev/null
        verdi profile show "$PROFILE" | grep -q 'core.rabbitmq' || { echo "  presto did not find RabbitMQ"; false; }
    fi
    changed "created profile $PROFILE in $AIIDA_PATH"
fi

# ---------------------------------------------------------------------------------------------------------------------
step "codes and pseudopotentials" "run 'aiida-mad -p $PROFILE setup localhost' by hand to see the full error"
OUTPUT="$(aiida-mad -p "$PROFILE" setup localhost 2>&1)" || { echo "$OUTPUT"; false; }
echo "$OUTPUT" | sed 's/^/  /'
grep -q 'nothing to do' <<<"$OUTPUT" || CHANGED=1

if [[ $USE_SSSP -eq 1 ]]; then
    step "SSSP 1.2 PBEsol efficiency" "without network, download the archive elsewhere with 'aiida-pseudo install sssp -v 1.2 -x PBEsol -p efficiency --download-only' and pass --sssp-archive"
    if aiida-pseudo -p "$PROFILE" list --raw 2>/dev/null | grep -q 'SSSP/1.2/PBEsol/efficiency'; then
        unchanged "SSSP/1.2/PBEsol/efficiency"
    else
        SSSP=(aiida-pseudo -p "$PROFILE" install sssp -v 1.2 -x PBEsol -p efficiency)
        [[ -n "$SSSP_ARCHIVE" ]] && SSSP+=(--from-download "$SSSP_ARCHIVE")
        "${SSSP[@]}"
        changed "installed SSSP/1.2/PBEsol/efficiency"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------------
if [[ $START_DAEMON -eq 1 ]]; then
    step "daemon" "see the daemon log: verdi -p $PROFILE daemon logshow"
    if verdi -p "$PROFILE" daemon status >/dev/null 2>&1; then
        unchanged "daemon of $PROFILE running"
    else
        verdi -p "$PROFILE" daemon start 1 >/dev/null
        changed "started the daemon of $PROFILE"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------------
step "summary" ""
SHOW="$(verdi -p "$PROFILE" profile show "$PROFILE" 2>/dev/null || true)"
echo "  profile: $PROFILE (storage $(awk '/^storage:/{f=1} f && /backend:/{print $2; exit}' <<<"$SHOW"), broker $(awk '/^process_control:/{f=1} f && /backend:/{print $2; exit}' <<<"$SHOW"))"
echo "  daemon: $(verdi -p "$PROFILE" daemon status >/dev/null 2>&1 && echo running || echo stopped)"
echo "  codes:"
verdi -p "$PROFILE" code list --raw -P full_label 2>/dev/null | awk 'NF {print "    " $1}' || true
echo "  pseudopotential families:"
aiida-pseudo -p "$PROFILE" list --raw 2>/dev/null | awk '{print "    " $1}' || true
echo "  AIIDA_PATH=$AIIDA_PATH   (source $VENV/bin/activate sets it)"
if [[ $CHANGED -eq 0 ]]; then
    echo "nothing changed: everything was already set up."
else
    echo "setup complete."
fi
