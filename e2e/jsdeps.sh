#!/bin/sh
# Fetches the real JavaScript clients the browser tests load unchanged —
# @rails/actioncable, @hotwired/turbo, @hotwired/turbo-rails and
# @anycable/web — from npm into e2e/.jsdeps/node_modules. That folder is
# git-ignored: the packages are fetched at test time, never committed.
#
# Versions are pinned, the dependencies of dependencies too, so a test run
# today and one next year load the same code; bump them here. Run again, it
# only checks that what is there is what is pinned. npm is Debian's,
# installed by e2e/deps.sh when missing. Package scripts never run.
#
#   sh e2e/jsdeps.sh        (make jsdeps)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir="$here/.jsdeps"

# name@version, one a line; the last three are what @hotwired/turbo-rails
# and @anycable/web depend on, pinned here so npm picks no newer ones.
PINS="@rails/actioncable@8.1.400
@hotwired/turbo@8.0.23
@hotwired/turbo-rails@8.0.23
@anycable/web@1.1.1
@anycable/core@1.1.7
nanoevents@9.1.0"

# installed says whether every pinned package is in place at its version.
installed() {
	for pin in $PINS; do
		name=${pin%@*}
		version=${pin##*@}
		pkg="$dir/node_modules/$name/package.json"
		[ -f "$pkg" ] || return 1
		grep -q "\"version\": *\"$version\"" "$pkg" || return 1
	done
}

installed && exit 0

command -v npm >/dev/null 2>&1 || sh "$here/deps.sh" npm

mkdir -p "$dir"
# Two test runs at once must not install over each other.
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
	installed && exit 0
fi

{
	echo '{"name": "cablecar-e2e-jsdeps", "private": true, "dependencies": {'
	sep=""
	for pin in $PINS; do
		printf '%s  "%s": "%s"' "$sep" "${pin%@*}" "${pin##*@}"
		sep=",
"
	done
	echo
	echo '}}'
} >"$dir/package.json"

echo "jsdeps: fetching$(printf ' %s' $PINS) into $dir"
cd "$dir"
npm install --no-audit --no-fund --ignore-scripts --no-package-lock --loglevel=error \
	--update-notifier=false >/dev/null

if ! installed; then
	echo "jsdeps: npm finished but the pinned versions are not all in $dir/node_modules" >&2
	exit 1
fi
