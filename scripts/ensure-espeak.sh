#!/usr/bin/env bash
# Make sure the `espeak-ng` speech synthesizer is on PATH (the ASR integration tests and the
# end-to-end tests speak their test sentences with it); installed from Debian when missing.
exec bash "$(dirname "${BASH_SOURCE[0]}")/ensure-debian-tool.sh" espeak-ng espeak-ng
