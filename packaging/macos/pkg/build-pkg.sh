#!/bin/sh
# Build SendGuard-@VERSION@.pkg from this folder, on a Mac (pkgbuild and productbuild come with Xcode's
# command line tools). Sign it with your Developer ID Installer certificate for MDM deployment:
#
#   ./build-pkg.sh ["Developer ID Installer: Example Corp (TEAMID)"]
#
# The payload (root/) installs @PREFIX@/share (the wheel, the locked wheelhouse, install.sh) and the
# root-owned machine policy @POLICY_DIR@/policy.toml; scripts/postinstall makes the venv.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
SIGN="${1:-}"
cd "$HERE"
pkgbuild --root root --scripts scripts --identifier '@IDENTIFIER@' --version '@VERSION@' \
    --install-location / --ownership recommended SendGuard-component.pkg
if [ -n "$SIGN" ]; then
    productbuild --distribution distribution.xml --package-path . --sign "$SIGN" 'SendGuard-@VERSION@.pkg'
else
    productbuild --distribution distribution.xml --package-path . 'SendGuard-@VERSION@.pkg'
fi
rm -f SendGuard-component.pkg
echo "Built $HERE/SendGuard-@VERSION@.pkg"
