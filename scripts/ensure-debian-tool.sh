#!/usr/bin/env bash
# ensure-debian-tool.sh PACKAGE EXECUTABLE: make sure EXECUTABLE (a command name or an absolute
# path) exists, installing Debian's PACKAGE when it does not. Present: do nothing, print nothing.
# Missing: apt-get install, which needs root; otherwise fail with what to run. Idempotent.
set -euo pipefail

package=${1:?usage: ensure-debian-tool.sh PACKAGE EXECUTABLE}
executable=${2:?usage: ensure-debian-tool.sh PACKAGE EXECUTABLE}

say() { echo "ensure-$package: $*"; }
die() { echo "ensure-$package: ERROR: $*" >&2; exit 1; }
present() { command -v "$executable" >/dev/null 2>&1; }

present && exit 0

command -v apt-get >/dev/null 2>&1 ||
  die "$executable is missing and there is no apt-get here; install $package with your package manager"
[[ $(id -u) -eq 0 ]] ||
  die "$executable is missing; install it as root: sudo apt-get update && sudo apt-get install -y $package"

say "installing $package (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# apt's output is shown only when it fails (debconf chatter otherwise).
log=$(apt-get update -qq 2>&1) || die "apt-get update failed:"$'\n'"$log"
log=$(apt-get install -y -qq --no-install-recommends "$package" 2>&1) ||
  die "apt-get install $package failed:"$'\n'"$log"
present || die "$executable is still missing after installing $package"
say "installed $("$executable" --version 2>/dev/null | head -n 1)"
