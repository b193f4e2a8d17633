#!/bin/sh
# Install SendGuard @VERSION@ on macOS, for every user of the Mac (run with sudo, or from your MDM).
#
#   sudo ./install.sh [--python PATH] [--wheelhouse DIR] [--no-trust] [--prefix DIR]
#   (the .pkg's postinstall runs it as @PREFIX@/share/install.sh --from-pkg)
#
# Machine-wide: the venv @PREFIX@/venv with the bundled wheel and its requirements, the command
# /usr/local/bin/sendguard, the admin policy in the root-owned folder @POLICY_DIR@, and the
# LaunchAgent /Library/LaunchAgents/@LABEL@.plist that starts `sendguard serve` at every user's login. For the user logged in now it also loads the
# agent and trusts the helper's local CA (`sendguard addin certs install --trust`).
#
# --prefix DIR installs under DIR as if it were / (every path, the wrapper's and the agent's too) and
# skips launchctl and the CA: a dry run that can be inspected and removed with uninstall.sh --prefix.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=""
WHEELHOUSE=""
TRUST=1
PREFIX_ROOT=""
PIP_EXTRA=""
FROM_PKG=0

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
    --python) PYTHON="$2"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
    --no-trust) TRUST=0; shift ;;
    --prefix) PREFIX_ROOT="$2"; shift 2 ;;
    --no-deps) PIP_EXTRA="--no-deps"; shift ;;  # tests: install the wheel alone
    --from-pkg) FROM_PKG=1; shift ;;  # the payload is in place; the policy came with it
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$PREFIX_ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo ./install.sh), or give --prefix DIR to stage the files" >&2
    exit 1
fi

APP="$PREFIX_ROOT@PREFIX@"
VENV="$APP/venv"
BIN_DIR="$PREFIX_ROOT/usr/local/bin"
AGENTS="$PREFIX_ROOT/Library/LaunchAgents"
PLIST="$AGENTS/@LABEL@.plist"

if [ -z "$PYTHON" ]; then
    for candidate in python3.13 python3.12 python3.11 python3 \
        /Library/Frameworks/Python.framework/Versions/Current/bin/python3 /opt/homebrew/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON=$(command -v "$candidate")
            break
        fi
    done
fi
if [ -z "$PYTHON" ]; then
    echo "install.sh: Python 3.11 or newer not found (macOS's own python3 is older): install it from" >&2
    echo "python.org, or pass --python /path/to/python3" >&2
    exit 1
fi

echo "SendGuard: Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])') at $PYTHON"
mkdir -p "$APP"
cp "$HERE/@WHEEL@" "$HERE/requirements.txt" "$APP/"
[ -f "$HERE/config.toml" ] && cp "$HERE/config.toml" "$APP/config.toml"
# Reuse the venv when it runs the same Python; otherwise (new install, other Python) make it anew.
want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    "$PYTHON" -m venv --clear "$VENV"
fi

set -- --disable-pip-version-check --no-input
[ -n "$WHEELHOUSE" ] && set -- "$@" --no-index --find-links "$WHEELHOUSE" --find-links "$APP"
fail_pip() {
    echo "" >&2
    echo "SendGuard: pip could not install into $VENV. Most often this Mac cannot reach PyPI (or the" >&2
    echo "index in pip.conf): see pip's messages above. For offline Macs: pip download -r requirements.txt" >&2
    echo "-d wheels on a Mac with the same Python, then ./install.sh --wheelhouse wheels" >&2
    exit 1
}
if [ -z "$PIP_EXTRA" ]; then
    "$VENV/bin/python" -m pip install "$@" --requirement "$APP/requirements.txt" || fail_pip
fi
"$VENV/bin/python" -m pip install "$@" --no-deps --force-reinstall "$APP/@WHEEL@" || fail_pip

# The machine-wide policy lives in a root-owned folder (never a Homebrew prefix a user may write to);
# the marker in the venv pins it for every user, whatever their environment says.
POLICY_DIR='@POLICY_DIR@'
POLICY="$PREFIX_ROOT$POLICY_DIR/policy.toml"
mkdir -p "$PREFIX_ROOT$POLICY_DIR"
if [ "$FROM_PKG" = 0 ] && [ -f "$HERE/policy.toml" ]; then
    cp "$HERE/policy.toml" "$POLICY"
    echo "SendGuard: admin policy installed: $POLICY"
fi
if [ -z "$PREFIX_ROOT" ]; then
    chown root:wheel "$PREFIX_ROOT$POLICY_DIR" "$VENV"
    [ -f "$POLICY" ] && chown root:wheel "$POLICY"
fi
chmod 755 "$PREFIX_ROOT$POLICY_DIR"
[ -f "$POLICY" ] && chmod 644 "$POLICY"
cat >"$VENV/sendguard-install.toml" <<MARKER
# Written by the SendGuard macOS installer. Do not edit: reinstall instead.
admin_policy = "$POLICY_DIR/policy.toml"
MARKER
chmod 644 "$VENV/sendguard-install.toml"

mkdir -p "$APP/bin" "$BIN_DIR" "$AGENTS"
# The command: the wrapper below with this install's paths filled in.
sed_escape() { printf '%s' "$1" | sed 's/[#&\\]/\\&/g'; }
sed -e "s#%%APP%%#$(sed_escape "$APP")#g" \
    >"$APP/bin/sendguard" <<'WRAPPER'
@WRAPPER@WRAPPER
chmod 755 "$APP/bin/sendguard"
ln -sf "$APP/bin/sendguard" "$BIN_DIR/sendguard"

cat >"$PLIST" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>@LABEL@</string>
    <key>ProgramArguments</key>
    <array>
        <string>$APP/bin/sendguard</string>
        <string>serve</string>
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>LimitLoadToSessionType</key>
    <string>Aqua</string>
    <key>ProcessType</key>
    <string>Interactive</string>
</dict>
</plist>
PLIST
chmod 644 "$PLIST"

if [ -n "$PREFIX_ROOT" ]; then
    echo "SendGuard: staged under $PREFIX_ROOT (--prefix: launchctl and the CA step skipped)"
    exit 0
fi

chown root:wheel "$PLIST"
CONSOLE_USER=$(stat -f %Su /dev/console 2>/dev/null || true)
if [ -n "$CONSOLE_USER" ] && [ "$CONSOLE_USER" != root ] && [ "$CONSOLE_USER" != loginwindow ]; then
    CONSOLE_UID=$(id -u "$CONSOLE_USER")
    launchctl bootout "gui/$CONSOLE_UID/@LABEL@" 2>/dev/null || true
    launchctl bootstrap "gui/$CONSOLE_UID" "$PLIST" || echo "SendGuard: launchctl could not load the agent; it starts at next login" >&2
    if [ "$TRUST" = 1 ]; then
        launchctl asuser "$CONSOLE_UID" sudo -u "$CONSOLE_USER" "$APP/bin/sendguard" addin certs install --trust ||
            echo "SendGuard: $CONSOLE_USER must still run: sendguard addin certs install --trust" >&2
    fi
fi
echo "SendGuard @VERSION@ installed: the helper starts at each user's login."
