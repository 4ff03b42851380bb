#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium (the web page's browser test drives it with
# Playwright; Playwright's own browser downloads are never used). Present: do nothing, print
# nothing. Missing: install the Debian package with apt-get, which needs root; otherwise fail
# with what to run. Idempotent.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

say() { echo "ensure-chromium: $*"; }
die() { echo "ensure-chromium: ERROR: $*" >&2; exit 1; }

[[ -x $CHROMIUM ]] && exit 0

command -v apt-get >/dev/null 2>&1 ||
  die "chromium is missing and there is no apt-get here; install Chromium so that $CHROMIUM exists"
[[ $(id -u) -eq 0 ]] ||
  die "chromium is missing; install it as root: sudo apt-get update && sudo apt-get install -y chromium"

say "installing chromium (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# apt's output is shown only when it fails (debconf chatter otherwise).
log=$(apt-get update -qq 2>&1) || die "apt-get update failed:"$'\n'"$log"
log=$(apt-get install -y -qq --no-install-recommends chromium 2>&1) ||
  die "apt-get install chromium failed:"$'\n'"$log"
[[ -x $CHROMIUM ]] || die "$CHROMIUM is still missing after installing chromium"
say "installed $("$CHROMIUM" --version 2>/dev/null | head -n 1)"
