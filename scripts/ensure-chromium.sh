#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium (the web page's browser test drives it with
# Playwright; Playwright's own browser downloads are never used); installed when missing.
exec bash "$(dirname "${BASH_SOURCE[0]}")/ensure-debian-tool.sh" chromium /usr/bin/chromium
