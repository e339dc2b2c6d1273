#!/bin/sh
# Regenerates the README's screenshot (docs/report.png): the HTML report of
# `pytest experiments/exp_learning_rate.py`, first screen, in headless Chromium.
# Usage: benchmarks/report_screenshot.sh [OUT.png]   (PYTHON=... to pick the interpreter)
set -eu
cd "$(dirname "$0")/.."
out=${1:-docs/report.png}
py=${PYTHON:-python}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "needs Chromium (apt-get install chromium)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The claims pass; a failing run still renders, so the exit status is not ours to stop on.
"$py" -m pytest experiments/exp_learning_rate.py -q -p no:cacheprovider \
    --hpspec-html="$tmp/report.html" >"$tmp/pytest.log" 2>&1 || true
[ -s "$tmp/report.html" ] || { cat "$tmp/pytest.log" >&2; exit 1; }
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$tmp/profile" --window-size=1280,880 \
    --screenshot="$PWD/$out" "file://$tmp/report.html" >"$tmp/chromium.log" 2>&1
echo "wrote $out"
