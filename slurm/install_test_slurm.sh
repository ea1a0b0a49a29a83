#!/usr/bin/env bash
# Install a single-node Slurm (22.05 on Debian 12) for tests/test_slurm.py: slurmctld, slurmd,
# the client commands and munge. No daemon is started and nothing is configured here; the test
# harness (tests/slurm_harness.py) writes its own slurm.conf and starts the daemons itself.
#
#   slurm/install_test_slurm.sh          # as root; does nothing when everything is installed
#
# Exit codes: 0 installed (or already there); 1 the install failed; 3 cannot install here
# (not root or no apt-get): the Slurm tests then skip and say why.
set -euo pipefail
PKGS=(slurmctld slurmd slurm-client munge)
version() { dpkg-query -W -f='${Version}' slurm-client 2>/dev/null || echo unknown; }
have_all() {
  command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && { command -v munged >/dev/null || test -x /usr/sbin/munged; }
}
if have_all; then
  echo "slurm: already installed (slurm-client $(version))"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm: not installed and not root: cannot apt-get install ${PKGS[*]}" >&2
  exit 3
fi
if ! command -v apt-get >/dev/null; then
  echo "slurm: not installed and apt-get is missing: install ${PKGS[*]} with this system's package manager" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' maintainer scripts from starting daemons (there may be no systemd at all).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
if ! apt-get install -y --no-install-recommends "${PKGS[@]}" >/tmp/install_test_slurm.log 2>&1; then
  # a stale package index is the usual cause on a fresh machine
  apt-get update >>/tmp/install_test_slurm.log 2>&1 || true
  if ! apt-get install -y --no-install-recommends "${PKGS[@]}" >>/tmp/install_test_slurm.log 2>&1; then
    tail -n 30 /tmp/install_test_slurm.log >&2
    echo "slurm: apt-get install ${PKGS[*]} failed (full log: /tmp/install_test_slurm.log)" >&2
    exit 1
  fi
fi
have_all || { echo "slurm: packages installed but sbatch/slurmctld/slurmd/munged are still missing" >&2; exit 1; }
echo "slurm: installed (slurm-client $(version))"
