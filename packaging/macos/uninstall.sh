#!/bin/sh
# Remove SendGuard from this Mac (run with sudo). Users' data (~/Library/Application Support/SendGuard:
# outbox, audit log) stays. --prefix DIR undoes a staged install.
set -eu
PREFIX_ROOT=""
[ "${1:-}" = --prefix ] && PREFIX_ROOT="$2"
APP="$PREFIX_ROOT@PREFIX@"
PLIST="$PREFIX_ROOT/Library/LaunchAgents/@LABEL@.plist"
POLICY_DIR='@POLICY_DIR@'
if [ -z "$PREFIX_ROOT" ]; then
    CONSOLE_USER=$(stat -f %Su /dev/console 2>/dev/null || true)
    if [ -n "$CONSOLE_USER" ] && [ "$CONSOLE_USER" != root ]; then
        launchctl bootout "gui/$(id -u "$CONSOLE_USER")/@LABEL@" 2>/dev/null || true
    fi
fi
rm -f "$PLIST" "$PREFIX_ROOT/usr/local/bin/sendguard" "$PREFIX_ROOT$POLICY_DIR/policy.toml"
rmdir "$PREFIX_ROOT$POLICY_DIR" 2>/dev/null || true
rm -rf "$APP"
echo "SendGuard removed. Users' data in ~/Library/Application Support/SendGuard is kept."
