#!/usr/bin/env bash
# Make sure the `espeak-ng` speech synthesizer is on PATH (the ASR integration tests speak their
# test sentences with it). Present: do nothing, print nothing. Missing: install the Debian
# package with apt-get, which needs root; otherwise fail with what to run. Idempotent.
set -euo pipefail

say() { echo "ensure-espeak: $*"; }
die() { echo "ensure-espeak: ERROR: $*" >&2; exit 1; }

command -v espeak-ng >/dev/null 2>&1 && exit 0

command -v apt-get >/dev/null 2>&1 ||
  die "espeak-ng is missing and there is no apt-get here; install espeak-ng with your package manager"
[[ $(id -u) -eq 0 ]] ||
  die "espeak-ng is missing; install it as root: sudo apt-get update && sudo apt-get install -y espeak-ng"

say "installing espeak-ng (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# apt's output is shown only when it fails (debconf chatter otherwise).
log=$(apt-get update -qq 2>&1) || die "apt-get update failed:"$'\n'"$log"
log=$(apt-get install -y -qq --no-install-recommends espeak-ng 2>&1) ||
  die "apt-get install espeak-ng failed:"$'\n'"$log"
command -v espeak-ng >/dev/null 2>&1 || die "espeak-ng is still not on PATH after installing it"
say "installed $(espeak-ng --version | head -n 1)"
