#!/bin/sh
# SendGuard command line (installed by the SendGuard @KIND@). Runs the helper from @PREFIX@/venv.
#
# The machine-wide policy is pinned by the installer's marker in that venv
# (@PREFIX@/venv/sendguard-install.toml): no environment variable of the user's can move it.

if [ ! -x '@PREFIX@/venv/bin/sendguard' ]; then
    echo "sendguard: not set up yet: @PREFIX@/venv is missing; @REPAIR@" >&2
    exit 1
fi

# A user with no settings yet gets the company's (the central server's address) once.
if [ -f '@PREFIX@/config.toml' ] && [ -n "${HOME:-}" ]; then
    sg_home="${SENDGUARD_HOME:-${XDG_DATA_HOME:-@DATA_HOME@}/SendGuard}"
    if [ ! -e "$sg_home/config.toml" ]; then
        mkdir -p "$sg_home" && cp '@PREFIX@/config.toml' "$sg_home/config.toml" 2>/dev/null || true
    fi
fi

# The venv's console script, not `python -m`: that would import a `sendguard` folder in the current directory.
exec '@PREFIX@/venv/bin/sendguard' "$@"
