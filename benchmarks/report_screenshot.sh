#!/usr/bin/env bash
# Screenshot a medvlkit HTML report in headless Chromium (Debian's `chromium` package), to look at it as a
# person would. Usage: bash benchmarks/report_screenshot.sh runs/report/report.html runs/report/report.png
set -euo pipefail
page=$(realpath "$1"); png=${2:-${1%.html}.png}
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1280,"${HEIGHT:-4200}" --screenshot="$png" "file://$page" 2>/dev/null
rm -rf "$profile"
echo "wrote $png"
