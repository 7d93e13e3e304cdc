#!/usr/bin/env bash
# System packages the project needs (espeak-ng synthesises the keyword/ASD speech corpora).
# Installs them when we are root and they are missing; otherwise says what to install.
set -u
if command -v espeak-ng >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing espeak-ng (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
    || echo "warning: could not install espeak-ng; speech synthesis tests will be skipped"
else
  echo "note: espeak-ng is missing; install it with: sudo apt-get install -y espeak-ng"
fi
exit 0
