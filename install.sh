#!/usr/bin/env bash
# Install, upgrade or remove the school edge agent, or set up a developer checkout.
#
#   sudo ./install.sh                 install or upgrade in place (keeps config and queued alarms)
#   sudo ./install.sh --uninstall     remove the service and the code; keep config and data
#   sudo ./install.sh --purge         ... and remove config, data and the edge-agent user
#   ./install.sh --root DIR           stage an install under DIR (no root, apt, users or systemctl)
#   ./install.sh --dev                developer/CI machine: Debian packages, .venv, editable install
#
# Safe to re-run; see docs/install.md. Environment for tests and image builds:
#   EDGE_AGENT_PIP_ARGS   extra arguments for the production pip install, word-split
#                         (tests use "--no-deps --no-build-isolation --no-index" to stay offline)
#   EDGE_AGENT_PYTHON     interpreter for the production venv (default /usr/bin/python3, so the
#                         venv sees Debian's python3-picamera2, python3-lgpio and python3-av)
set -euo pipefail

# Debian packages for --dev (developer and CI machines). The one list to adjust:
#   mosquitto mosquitto-clients   brokers and clients the tests start on their own ports
#   gcc make mosquitto-dev libmosquitto-dev   build the broker's rate-limit plugin
#                                 (broker/rate_limit.c), which the broker tests load
#   ffmpeg                        makes and probes test video
#   iproute2                      ip netns / tc for the network-failure tests (root only)
#   systemd                       systemd-analyze for tests/test_install.py
#   python3-venv python3-pip      tests/test_install.py builds a production venv (Debian python3)
#   python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-*   a local RTSP test camera
#   (lint) shellcheck             tests/test_install.py lints this script
#   faketime                      tests/fault/test_clock.py steps the agent's wall clock
#   chromium                      tests/console: the officer's browser, driven by Playwright
#                                 (Playwright's own browser download needs the internet)
#   postgresql                    tests/postgres: the centre's shared ledger (a throwaway cluster
#                                 per test run, agent/testing/postgres.py; Debian's own unused)
DEV_APT_PACKAGES="mosquitto mosquitto-clients ffmpeg iproute2 systemd python3-venv python3-pip
  gcc make mosquitto-dev libmosquitto-dev
  python3-gi
  gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly shellcheck faketime chromium
  postgresql"
# ... and on 32-bit ARM (armhf), where PyPI has no wheel of numpy (a test extra), cffi or pyyaml:
# there .venv is made with Debian's python3 and --system-site-packages and takes these from Debian
# instead of compiling them (a Pi has no compiler as a rule).
DEV_ARMHF_APT_PACKAGES="python3-numpy python3-yaml python3-cryptography"

# Debian packages for a production install, on every architecture. The venv sees them
# (--system-site-packages) and pip keeps each one that satisfies pyproject.toml, so nothing is
# compiled on the box (docs/install.md, "Where each Python package comes from"):
#   python3-venv python3-pip   the venv itself
#   python3-yaml               PyYAML 6.0 with libyaml's C loader. PyPI has no armv7l wheel: pip
#                              would build one from the sdist, pure Python without a compiler.
#   python3-cryptography       cryptography 38 with its cffi backend, on the system's OpenSSL.
#                              PyPI's armv7l wheel of cryptography needs cffi, which has no armv7l
#                              wheel: pip would need a C compiler.
# Not python3-av: Debian bookworm's is 10.0 and the agent needs av >= 17.1 (pyproject.toml), so
# pip installs PyPI's wheel (FFmpeg inside; aarch64 and armv7l alike) into the venv.
RUNTIME_APT_PACKAGES="python3-venv python3-pip python3-yaml python3-cryptography"
# Only on a Raspberry Pi: the camera stack and lgpio exist only as Raspberry Pi OS packages.
# python3-picamera2 brings the OS's own python3-av; unless that is >= 17.1 the venv's av shadows
# it, and picamera2 (0.3.24 and later use only upstream PyAV's API) imports the venv's.
PI_APT_PACKAGES="python3-picamera2 python3-libcamera python3-lgpio"

SERVICE_USER=edge-agent
UNIT_NAME=edge-agent.service
OPT_DIR=/opt/edge-agent
VENV_DIR=$OPT_DIR/venv
ETC_DIR=/etc/edge-agent
CONFIG=$ETC_DIR/agent.yaml
STATE_DIR=/var/lib/edge-agent
UNIT_DIR=/etc/systemd/system
BIN_LINK=/usr/local/bin/edge-agent
DROPIN_NAME=restart-backoff.conf

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EXAMPLE_CONFIG=$SRC_DIR/agent/data/agent.example.yaml
UNIT_SRC=$SRC_DIR/systemd/$UNIT_NAME

MODE=install
PURGE=0
NO_VENV=0
CONFIG_FAILED=0
ROOT=""
WORK=""

usage() {
    cat <<EOF
Usage: install.sh [--root DIR] [--no-venv]   install or upgrade (as root unless --root)
       install.sh --uninstall [--purge] [--root DIR]
       install.sh --dev                     set up this checkout for development and tests
       install.sh --help

  (no option)    Install or upgrade: Debian packages, user $SERVICE_USER, venv in $VENV_DIR,
                 $CONFIG (only if missing), systemd unit; starts the service once
                 'edge-agent check-config' passes. Config and $STATE_DIR are never touched.
  --uninstall    Stop and remove the service and the code; keep config and data.
  --purge        Like --uninstall, and also delete $ETC_DIR, $STATE_DIR (queued alarms,
                 video) and the $SERVICE_USER user.
  --root DIR     Work on a staging tree under DIR instead of this machine: no apt, no users,
                 no chown, no systemctl (each skipped step is printed).
  --no-venv      Skip the venv and pip step (tests, or images that build the venv elsewhere).
  --dev          apt-get install the tools the tests need (as root; skipped otherwise), create
                 .venv here and pip install -e '.[test,lint,dc09,centre,console]'. Fast when
                 nothing changed.

Details: docs/install.md
EOF
}

say() { printf '%s\n' "$*"; }
skip() { printf 'skipped: %s (%s)\n' "$1" "$2"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

workdir() {
    if [ -z "$WORK" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-install.XXXXXX"); fi
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# The Debian architecture of this userland (amd64, arm64, armhf, ...; "" without dpkg). On a
# 32-bit Raspberry Pi OS with a 64-bit kernel `uname -m` says aarch64, dpkg says armhf.
debian_arch() { dpkg --print-architecture 2>/dev/null || true; }

# "true" if the venv at $1 sees the system's site-packages (Debian's python3-* packages).
venv_sees_system() {
    if grep -q '^include-system-site-packages = true' "$1/pyvenv.cfg" 2>/dev/null; then
        printf true
    else
        printf false
    fi
}

# systemd is PID 1 here (not a chroot, container or image build).
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

is_raspberry_pi() {
    local f
    for f in /proc/device-tree/model /sys/firmware/devicetree/base/model; do
        if [ -r "$f" ] && tr -d '\0' <"$f" | grep -q "Raspberry Pi"; then return 0; fi
    done
    return 1
}

# Print the packages of "$@" that are not installed (one line).
apt_missing() {
    local pkg missing=()
    for pkg in "$@"; do
        if [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != "ii " ]; then
            missing+=("$pkg")
        fi
    done
    printf '%s' "${missing[*]}"
}

# apt-get install "$@" quietly; the full log is shown only on failure.
apt_install() {
    workdir
    local log=$WORK/apt.log
    say "installing Debian packages: $* (can take a few minutes)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; } \
        >"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get install failed (output above). Check the network and apt sources, then re-run."
    fi
}

systemd_version() {
    local v=""
    if [ -n "$ROOT" ] && [ -r "$ROOT/var/lib/dpkg/status" ]; then
        # An image root: the version of its own systemd package.
        v=$(awk '/^Package: /{p=($2=="systemd")} p && /^Version: /{print $2; exit}' \
            "$ROOT/var/lib/dpkg/status")
    elif command -v systemctl >/dev/null 2>&1; then
        v=$(systemctl --version 2>/dev/null | awk 'NR==1{print $2}')
    fi
    v=${v%%[!0-9]*}
    printf '%s' "${v:-0}"
}

# --- production install -----------------------------------------------------------------

install_apt_packages() {
    local pkgs=$RUNTIME_APT_PACKAGES missing
    if is_raspberry_pi; then pkgs="$pkgs $PI_APT_PACKAGES"; fi
    if [ -n "$ROOT" ]; then skip "apt-get install $pkgs" "--root"; return; fi
    command -v dpkg-query >/dev/null 2>&1 || die "this installer needs Debian or Raspberry Pi OS (apt)."
    # shellcheck disable=SC2086  # word-splitting the package lists is intended
    missing=$(apt_missing $pkgs)
    if [ -z "$missing" ]; then say "ok: Debian packages ($pkgs)"; return; fi
    # shellcheck disable=SC2086
    apt_install $missing
    say "installed: $missing"
}

install_user() {
    if [ -n "$ROOT" ]; then
        skip "groupadd gpio video; useradd $SERVICE_USER" "--root"
        return
    fi
    local g
    for g in gpio video; do
        if ! getent group "$g" >/dev/null; then
            groupadd --system "$g"
            say "created: group $g"
        fi
    done
    if getent passwd "$SERVICE_USER" >/dev/null; then
        usermod --append --groups gpio,video "$SERVICE_USER"
        say "ok: user $SERVICE_USER (groups gpio, video)"
    else
        useradd --system --user-group --groups gpio,video --home-dir "$STATE_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "School edge agent" \
            "$SERVICE_USER"
        say "created: user $SERVICE_USER (groups gpio, video; no login shell)"
    fi
}

# install -d with an owner, or without one under --root.
make_dir() {
    local mode=$1 owner=$2 dir=$3
    if [ -d "$ROOT$dir" ]; then say "kept: $dir"; return; fi
    if [ -n "$ROOT" ]; then
        install -d -m "$mode" "$ROOT$dir"
        say "created: $dir ($mode)"
        skip "chown $owner $dir" "--root"
    else
        install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$dir"
        say "created: $dir ($mode $owner)"
    fi
}

install_dirs() {
    install -d -m 0755 "$ROOT$OPT_DIR"
    make_dir 0750 "root:$SERVICE_USER" "$ETC_DIR"
    make_dir 0750 "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
}

pick_python() {
    local py=${EDGE_AGENT_PYTHON:-/usr/bin/python3}
    if [ ! -x "$py" ]; then py=$(command -v python3 || true); fi
    [ -n "$py" ] || die "python3 not found; install python3-venv (apt-get install python3-venv)."
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is older than Python 3.11; the agent needs 3.11 (Debian 12 / bookworm)."
    printf '%s' "$py"
}

install_venv() {
    if [ "$NO_VENV" -eq 1 ]; then skip "python venv and pip install into $VENV_DIR" "--no-venv"; return; fi
    local venv=$ROOT$VENV_DIR py pip_extra=()
    py=$(pick_python)
    if "$venv/bin/python" -c 'import sys' >/dev/null 2>&1 \
        && [ "$(venv_sees_system "$venv")" = true ]; then
        say "ok: venv $VENV_DIR"
    else
        # Missing, or broken by a Python upgrade: build it again (the agent is reinstalled below).
        "$py" -m venv --clear --system-site-packages "$venv" \
            || die "could not create the venv; install python3-venv and re-run."
        say "created: venv $VENV_DIR ($("$venv/bin/python" -V 2>&1), sees Debian's packages)"
    fi
    # Build from a copy of what the package is made of (pyproject.toml: packages agent*), so a
    # root install leaves no root-owned build/ or *.egg-info in the checkout.
    workdir
    mkdir "$WORK/src"
    local item items=()
    for item in pyproject.toml setup.cfg setup.py MANIFEST.in README.md LICENSE agent; do
        if [ -e "$SRC_DIR/$item" ]; then items+=("$item"); fi
    done
    tar -C "$SRC_DIR" --exclude=__pycache__ --exclude='*.egg-info' -cf - "${items[@]}" \
        | tar -C "$WORK/src" -xf -
    read -r -a pip_extra <<<"${EDGE_AGENT_PIP_ARGS:-}"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
        --upgrade "${pip_extra[@]}" "$WORK/src"; then
        die "pip install failed (output above); the previous version may be half-replaced.
       Fix the cause (network, disk space) and re-run install.sh."
    fi
    if [ -n "$ROOT" ]; then
        # A venv is not relocatable: rewrite the staging prefix in its scripts so it is correct
        # once DIR becomes /.
        local f
        while IFS= read -r f; do
            sed -i "s|$venv|$VENV_DIR|g" "$f"
        done < <(grep -rlIF -- "$venv" "$venv/bin" "$venv/pyvenv.cfg" || true)
    fi
    say "installed: edge-agent $("$venv/bin/python" -c \
        'import importlib.metadata as m; print(m.version("edge-agent"))') into $VENV_DIR"
}

install_config() {
    [ -f "$EXAMPLE_CONFIG" ] || die "$EXAMPLE_CONFIG is missing; is this a complete checkout?"
    if [ -e "$ROOT$CONFIG" ]; then
        say "kept: $CONFIG (an existing config is never overwritten)"
        return
    fi
    if [ -n "$ROOT" ]; then
        install -m 0640 "$EXAMPLE_CONFIG" "$ROOT$CONFIG"
        say "created: $CONFIG (0640) from agent/data/agent.example.yaml"
        skip "chown root:$SERVICE_USER $CONFIG" "--root"
    else
        install -m 0640 -o root -g "$SERVICE_USER" "$EXAMPLE_CONFIG" "$CONFIG"
        say "created: $CONFIG (0640 root:$SERVICE_USER) from agent/data/agent.example.yaml"
    fi
}

install_files() {
    local f dropin_dir=$ROOT$UNIT_DIR/$UNIT_NAME.d version
    install -d -m 0755 "$ROOT$OPT_DIR/docs" "$ROOT$UNIT_DIR"
    # Offline copies for the technician: install.md, security.md, hardware.md (wiring), and the
    # example configs, so the box does not depend on the checkout.
    for f in docs/install.md:install.md docs/security.md:security.md hardware/README.md:hardware.md; do
        if [ -f "$SRC_DIR/${f%%:*}" ]; then
            install -m 0644 "$SRC_DIR/${f%%:*}" "$ROOT$OPT_DIR/docs/${f##*:}"
        fi
    done
    for f in "$SRC_DIR"/hardware/examples/*.yaml; do
        if [ -f "$f" ]; then install -D -m 0644 "$f" "$ROOT$OPT_DIR/examples/$(basename "$f")"; fi
    done
    install -m 0644 "$UNIT_SRC" "$ROOT$UNIT_DIR/$UNIT_NAME"
    say "installed: $UNIT_DIR/$UNIT_NAME"
    version=$(systemd_version)
    if [ "$version" -ge 254 ]; then
        # RestartSteps=/RestartMaxDelaySec= exist from systemd 254: retry fast, then slower.
        install -d -m 0755 "$dropin_dir"
        printf '%s\n' "# Written by install.sh (systemd $version >= 254)." "[Service]" \
            "RestartSteps=5" "RestartMaxDelaySec=30s" >"$dropin_dir/$DROPIN_NAME"
        chmod 0644 "$dropin_dir/$DROPIN_NAME"
        say "installed: $UNIT_DIR/$UNIT_NAME.d/$DROPIN_NAME (restart backoff 2 s -> 30 s)"
    elif [ -e "$dropin_dir/$DROPIN_NAME" ]; then
        rm -f "$dropin_dir/$DROPIN_NAME"
        rmdir "$dropin_dir" 2>/dev/null || true
    fi
    # So a technician can type `sudo edge-agent selftest`; never replace someone else's file.
    if [ "$NO_VENV" -eq 0 ] && { [ -L "$ROOT$BIN_LINK" ] || [ ! -e "$ROOT$BIN_LINK" ]; }; then
        install -d -m 0755 "$ROOT$(dirname "$BIN_LINK")"
        ln -sfn "$VENV_DIR/bin/edge-agent" "$ROOT$BIN_LINK"
    fi
}

# Validate the config as the service user, then enable and (re)start. Sets CONFIG_FAILED=1
# (instead of returning non-zero, which would switch off `set -e` inside) when the config fails.
activate() {
    local unit_cmd="systemctl enable $UNIT_NAME; systemctl restart $UNIT_NAME"
    if [ -n "$ROOT" ]; then
        skip "systemctl daemon-reload" "--root"
        skip "edge-agent check-config -c $CONFIG" "--root; run it on the target"
        skip "$unit_cmd" "--root"
        return 0
    fi
    if systemd_running; then systemctl daemon-reload; say "ok: systemctl daemon-reload"; fi
    if [ "$NO_VENV" -eq 1 ]; then
        skip "edge-agent check-config and $unit_cmd" "--no-venv"
        return 0
    fi
    say "checking: $CONFIG"
    if ! (cd / && runuser -u "$SERVICE_USER" -- "$VENV_DIR/bin/edge-agent" check-config -c "$CONFIG"); then
        say ""
        say "The configuration has problems (listed above); $UNIT_NAME was not started."
        say "Fix them:   sudo nano $CONFIG   (wiring: $OPT_DIR/docs/hardware.md; examples: $OPT_DIR/examples/)"
        say "Then run:   sudo $SRC_DIR/install.sh   (or: sudo edge-agent check-config -c $CONFIG)"
        if systemd_running && systemctl is-active --quiet "$UNIT_NAME"; then
            warn "$UNIT_NAME is still running the previous start and was left as it was;" \
                "it will fail at its next restart until the config is fixed."
        fi
        CONFIG_FAILED=1
        return 0
    fi
    if ! systemd_running; then
        # A chroot or image build: enabling only makes symlinks, which works without PID 1.
        if systemctl enable --quiet "$UNIT_NAME"; then
            say "enabled: $UNIT_NAME (starts at next boot)"
        else
            warn "could not enable $UNIT_NAME; at the target run: sudo systemctl enable $UNIT_NAME"
        fi
        skip "systemctl restart $UNIT_NAME" "systemd is not running here"
        return 0
    fi
    systemctl enable --quiet "$UNIT_NAME"
    # Type=notify: restart returns once the agent has sent READY=1 (or has failed).
    if ! systemctl restart "$UNIT_NAME"; then
        journalctl -u "$UNIT_NAME" -n 30 --no-pager >&2 || true
        die "$UNIT_NAME did not start (log above). After fixing: sudo systemctl restart $UNIT_NAME"
    fi
    say "started: $UNIT_NAME (enabled at boot)"
}

do_install() {
    [ -f "$UNIT_SRC" ] || die "$UNIT_SRC is missing; is this a complete checkout?"
    if [ -z "$ROOT" ] && ! is_root; then
        die "a production install needs root: sudo $0   (or --root DIR to stage, --dev for a checkout)"
    fi
    local action=installing
    if [ -e "$ROOT$VENV_DIR" ] || [ -e "$ROOT$UNIT_DIR/$UNIT_NAME" ]; then action=upgrading; fi
    say "edge-agent: $action into ${ROOT:-/}"
    install_apt_packages
    install_user
    install_dirs
    install_venv
    install_config
    install_files
    activate
    say ""
    if [ -n "$ROOT" ]; then
        say "Staged under $ROOT. On the target: create the $SERVICE_USER user (groups gpio, video),"
        say "chown root:$SERVICE_USER $ETC_DIR $CONFIG and $SERVICE_USER: $STATE_DIR, then run"
        say "check-config and enable $UNIT_NAME (or simply run install.sh there)."
        return 0
    fi
    local test_cmd="sudo edge-agent status"
    if [ "$NO_VENV" -eq 0 ] && "$VENV_DIR/bin/edge-agent" selftest --help >/dev/null 2>&1; then
        test_cmd="sudo edge-agent selftest"
    fi
    say "Next:"
    say "  1. Edit the config:  sudo nano $CONFIG   (examples: $OPT_DIR/examples/)"
    say "  2. Check it:         sudo edge-agent check-config -c $CONFIG"
    if [ "$CONFIG_FAILED" -eq 0 ]; then
        say "  3. Apply it:         sudo systemctl restart edge-agent"
    else
        say "  3. Start it:         sudo $SRC_DIR/install.sh   (starts the service once the config passes)"
    fi
    say "  4. Test the box:     $test_cmd   (then press each button)"
    say "  5. Watch the log:    journalctl -u edge-agent -f"
    return "$CONFIG_FAILED"
}

# --- uninstall ----------------------------------------------------------------------------

do_uninstall() {
    if [ -z "$ROOT" ] && ! is_root; then die "uninstalling needs root: sudo $0 --uninstall"; fi
    local dropin_dir=$ROOT$UNIT_DIR/$UNIT_NAME.d
    if [ -n "$ROOT" ]; then
        skip "systemctl disable --now $UNIT_NAME" "--root"
    elif command -v systemctl >/dev/null 2>&1; then
        if systemd_running; then
            systemctl disable --now --quiet "$UNIT_NAME" 2>/dev/null || true
        else
            systemctl disable --quiet "$UNIT_NAME" 2>/dev/null || true
        fi
        say "stopped: $UNIT_NAME (disabled)"
    fi
    rm -f "$ROOT$UNIT_DIR/$UNIT_NAME" "$dropin_dir/$DROPIN_NAME"
    if [ "$PURGE" -eq 1 ]; then rm -rf "$dropin_dir"; else rmdir "$dropin_dir" 2>/dev/null || true; fi
    say "removed: $UNIT_DIR/$UNIT_NAME"
    if [ -n "$ROOT" ]; then
        skip "systemctl daemon-reload" "--root"
    elif systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    if [ -L "$ROOT$BIN_LINK" ]; then rm -f "$ROOT$BIN_LINK"; fi
    rm -rf "$ROOT$OPT_DIR"
    say "removed: $OPT_DIR (venv, docs, examples)"
    if [ "$PURGE" -eq 0 ]; then
        say "kept: $ETC_DIR (config) and $STATE_DIR (queued alarms, video); --purge removes them"
        return 0
    fi
    rm -rf "$ROOT$ETC_DIR" "$ROOT$STATE_DIR"
    say "removed: $ETC_DIR and $STATE_DIR"
    if [ -n "$ROOT" ]; then
        skip "userdel $SERVICE_USER" "--root"
    elif getent passwd "$SERVICE_USER" >/dev/null; then
        userdel "$SERVICE_USER"
        if getent group "$SERVICE_USER" >/dev/null; then groupdel "$SERVICE_USER"; fi
        say "removed: user $SERVICE_USER (groups gpio and video are kept)"
    fi
    say "Recordings on a separate disk (/mnt/edge-agent) were not touched."
}

# --- developer machine ----------------------------------------------------------------------

# Run "$@" as the owner of the checkout when root runs --dev in someone else's checkout
# (sudo ./install.sh --dev), so .venv does not end up owned by root.
as_owner() {
    local owner
    owner=$(stat -c %U "$SRC_DIR")
    if is_root && [ "$owner" != root ] && [ "$owner" != UNKNOWN ]; then
        runuser -u "$owner" -- env HOME="$(getent passwd "$owner" | cut -d: -f6)" "$@"
    else
        "$@"
    fi
}

stop_test_broker_service() {
    # apt starts Debian's mosquitto on port 1883; the tests run their own brokers.
    if systemd_running; then
        systemctl disable --now --quiet mosquitto.service >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service mosquitto stop >/dev/null 2>&1 || true
        update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
    say "stopped: Debian's mosquitto service (tests start their own brokers)"
}

do_dev() {
    cd "$SRC_DIR"
    local missing="" py stamp want pkgs=() armhf_pkgs=() system_site=false venv_opts=()
    local extras="test,lint,dc09,centre,console"
    read -r -d '' -a pkgs <<<"$DEV_APT_PACKAGES" || true
    if [ "$(debian_arch)" = armhf ]; then
        read -r -d '' -a armhf_pkgs <<<"$DEV_ARMHF_APT_PACKAGES" || true
        pkgs+=("${armhf_pkgs[@]}")
        system_site=true
        venv_opts=(--system-site-packages)
        extras="test"   # no armv7l wheels of librt (mypy), pycryptodome, psycopg, playwright
    fi
    if command -v dpkg-query >/dev/null 2>&1; then missing=$(apt_missing "${pkgs[@]}"); fi
    if ! command -v dpkg-query >/dev/null 2>&1; then
        skip "apt-get install" "no dpkg here; install the equivalents of: ${pkgs[*]}"
    elif [ -z "$missing" ]; then
        say "ok: Debian packages for development"
    elif ! is_root; then
        skip "apt-get install $missing" "not root; run: sudo apt-get install -y $missing"
    else
        local had_mosquitto=1
        if [ -n "$(apt_missing mosquitto)" ]; then had_mosquitto=0; fi
        # shellcheck disable=SC2086  # word-splitting the package list is intended
        apt_install $missing
        say "installed: $missing"
        if [ "$had_mosquitto" -eq 0 ]; then stop_test_broker_service; fi
    fi

    if [ "$system_site" = true ]; then
        # armhf: Debian's python3, whose dist-packages hold the packages PyPI has no wheel of.
        py=/usr/bin/python3
        [ -x "$py" ] || die "$py not found; install python3-venv (apt-get install python3-venv)."
    else
        py=$(command -v python3) || die "python3 not found on PATH."
        if ! as_owner "$py" -c '' 2>/dev/null && [ -x /usr/bin/python3 ]; then
            # root's python3 (a pyenv under /root, say) is not usable by the checkout's owner.
            say "note: using /usr/bin/python3 ($py cannot be run by $(stat -c %U "$SRC_DIR"))"
            py=/usr/bin/python3
        fi
    fi
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is older than Python 3.11; install 3.11 (Debian 12 has it) and re-run."
    if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1 \
        || [ "$(venv_sees_system .venv)" != "$system_site" ]; then
        as_owner "$py" -m venv --clear "${venv_opts[@]}" .venv
        if [ "$system_site" = true ]; then
            say "created: .venv ($(.venv/bin/python -V 2>&1); armhf: sees Debian's packages)"
        else
            say "created: .venv ($(.venv/bin/python -V 2>&1))"
        fi
    fi
    # Editable install: code changes need no reinstall, only a changed pyproject.toml does.
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python -V 2>&1)"
    stamp=$(cat .venv/.edge-agent-dev-stamp 2>/dev/null || true)
    if [ "$stamp" = "$want" ] && [ -x .venv/bin/edge-agent ]; then
        say "ok: .venv is up to date (pyproject.toml unchanged)"
    else
        say "installing: edge-agent (editable) and test tools ($extras) into .venv"
        as_owner .venv/bin/python -m pip install --disable-pip-version-check --no-input --quiet \
            -e ".[$extras]" || die "pip install failed (output above); fix the cause and re-run."
        if [ "$extras" = test ]; then
            skip "the lint, dc09, centre and console extras (mypy, ruff, pysiaalarm, psycopg, playwright)" \
                "armhf: no armv7l wheels of them; lint and run those tests elsewhere"
        fi
        as_owner tee .venv/.edge-agent-dev-stamp <<<"$want" >/dev/null
        say "installed: edge-agent (editable) into .venv"
    fi
    say ""
    say "Ready. Run the tests:  .venv/bin/pytest"
    say "       Try the agent:  .venv/bin/edge-agent demo"
}

# --- main ---------------------------------------------------------------------------------

main() {
    umask 022
    while [ $# -gt 0 ]; do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --dev) MODE=dev ;;
            --uninstall) MODE=uninstall ;;
            --purge) MODE=uninstall; PURGE=1 ;;
            --no-venv) NO_VENV=1 ;;
            --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
            --root=*) ROOT=${1#--root=} ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    if [ -n "$ROOT" ]; then
        [ "$MODE" != dev ] || die "--dev works on this checkout; it does not take --root."
        mkdir -p "$ROOT"
        ROOT=$(cd "$ROOT" && pwd)
        [ "$ROOT" != / ] || die "--root / is the running system: leave out --root."
    fi
    case $MODE in
        install) do_install ;;
        uninstall) do_uninstall ;;
        dev) do_dev ;;
    esac
}

main "$@"
