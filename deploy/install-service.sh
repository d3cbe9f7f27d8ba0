#!/usr/bin/env bash
# Installs watchgw as the systemd service the units in systemd/ describe (`make install-service`):
#   PREFIX      the venv holding watchgw               (default /opt/watchgw)
#   SYSCONFDIR  watchgw.toml and the upstream token    (default /etc/watchgw)
#   UNITDIR     watchgw{,@}.service, watchgw{,@}.socket (default /etc/systemd/system)
# The units are installed with these paths in them, so ExecStart= names the watchgw this script
# installed. An existing watchgw.toml or token is kept (a re-run upgrades the package only).
# Other variables: PY (the Python that makes the venv, default python3), PIP_ARGS (extra
# arguments to pip; the tests install offline with --no-deps --no-build-isolation --no-index).
# There is no DESTDIR: a venv is not relocatable (its scripts name their own path), so the files
# are installed where they will run; point the three directories elsewhere to try it unprivileged.
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}
PREFIX=${PREFIX:-/opt/watchgw}
SYSCONFDIR=${SYSCONFDIR:-/etc/watchgw}
UNITDIR=${UNITDIR:-/etc/systemd/system}
PY=${PY:-python3}
PIP_ARGS=${PIP_ARGS:-}

for dir in "$PREFIX" "$SYSCONFDIR" "$UNITDIR"; do
    case "$dir" in
        /*) ;;
        *) echo "install-service: $dir must be an absolute path (the units name it)" >&2; exit 1 ;;
    esac
done

echo "install-service: venv $PREFIX"
"$PY" -m venv "$PREFIX"
# shellcheck disable=SC2086  # PIP_ARGS is a list of arguments
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check $PIP_ARGS --upgrade "$SRC"
# Documentation= in the units points here.
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"

install -d -m 0755 "$SYSCONFDIR"
if [ -e "$SYSCONFDIR/watchgw.toml" ]; then
    echo "install-service: keeping $SYSCONFDIR/watchgw.toml"
else
    # World-readable: the service runs as a dynamic user, and the file holds no secret (the
    # token comes through LoadCredential=, below).
    install -m 0644 "$SRC/config/watchgw.toml" "$SYSCONFDIR/watchgw.toml"
    echo "install-service: $SYSCONFDIR/watchgw.toml (set upstream.url)"
fi
if [ ! -e "$SYSCONFDIR/token" ]; then
    # LoadCredential=token:... fails the start when the file is missing; an empty one starts the
    # gateway, whose upstream then answers 401 until the token is written here.
    install -m 0600 /dev/null "$SYSCONFDIR/token"
    echo "install-service: $SYSCONFDIR/token (empty: write the upstream token into it)"
fi

install -d -m 0755 "$UNITDIR"
for unit in watchgw.service watchgw@.service watchgw.socket watchgw@.socket; do
    sed -e "s|/opt/watchgw|$PREFIX|g" -e "s|/etc/watchgw|$SYSCONFDIR|g" "$SRC/systemd/$unit" >"$UNITDIR/$unit.tmp"
    chmod 0644 "$UNITDIR/$unit.tmp"
    mv "$UNITDIR/$unit.tmp" "$UNITDIR/$unit"
done
echo "install-service: units in $UNITDIR"

cat <<EOF
install-service: done. Next:
  systemctl daemon-reload
  systemctl enable --now watchgw.socket watchgw.service
  systemctl status watchgw          # "Status:" shows clients, channels and the upstream state
EOF
