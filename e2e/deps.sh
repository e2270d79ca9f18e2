#!/bin/sh
# Installs the Debian packages named as arguments when any is missing.
# As root it runs apt-get itself; otherwise it stops at once and prints the
# one command to run.
set -eu
missing=""
for pkg in "$@"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
	echo "missing:$missing — install them with your package manager (Debian/Ubuntu names shown)" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "missing:$missing — run: sudo apt-get update && sudo apt-get install -y$missing" >&2
	exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
