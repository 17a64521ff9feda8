#!/usr/bin/env bash
# Installs Debian's `prometheus` package (server + promtool), `prometheus-node-exporter`,
# `prometheus-pushgateway` and `prometheus-alertmanager` (server + amtool) if missing: the local
# Prometheus that `make run` starts (with a node_exporter on loopback for the hosts dashboard, a
# Pushgateway on loopback that the pipeline pushes its metrics to, and an Alertmanager on loopback
# that delivers the alerts) and the rules/config checks of the tests need them.
# Called by `make run` and `make test` (so also by .ci/run). Idempotent and quiet when
# prometheus and promtool are already on PATH.
#
# The packages' own services are never started: services are blocked during the install by a
# temporary policy-rc.d (unless the machine already has one), and afterwards they are disabled
# and masked (systemd) and disabled (SysV rc links), so that no reboot starts them: they would
# listen on every interface and take the ports of the project's own Prometheus, which runs as the
# current user (mlops_assets/resources/prometheus.py) on loopback; the binary needs no root.
# Machines set up by an earlier version of this script get the masks on the next run.
set -euo pipefail

debian_services=(prometheus prometheus-node-exporter prometheus-pushgateway prometheus-alertmanager)

# True when every Debian service is masked and has no SysV start link.
services_blocked() {
  local name
  for name in "${debian_services[@]}"; do
    [ "$(readlink "/etc/systemd/system/$name.service" 2>/dev/null)" = /dev/null ] || return 1
    if compgen -G "/etc/rc[2-5].d/S??$name" >/dev/null; then return 1; fi
  done
}

block_services() {
  local name
  for name in "${debian_services[@]}"; do
    [ -e "/lib/systemd/system/$name.service" ] || [ -e "/etc/init.d/$name" ] || continue
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now "$name.service" >/dev/null 2>&1 || true
      systemctl mask "$name.service" >/dev/null
    else
      # No running systemd (a container, a chroot): what `disable` and `mask` write, by hand.
      rm -f /etc/systemd/system/*.wants/"$name.service"
      mkdir -p /etc/systemd/system
      ln -sfn /dev/null "/etc/systemd/system/$name.service"
    fi
    # SysV rc links (Debian's packages install both): S links become K links.
    if [ -e "/etc/init.d/$name" ] && command -v update-rc.d >/dev/null; then
      update-rc.d "$name" disable >/dev/null 2>&1 || true
    fi
  done
  echo "Debian's ${debian_services[*]} services: disabled and masked (the project runs its own)"
}

installed=0
if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v prometheus-node-exporter >/dev/null \
  && command -v prometheus-pushgateway >/dev/null && command -v prometheus-alertmanager >/dev/null \
  && command -v amtool >/dev/null; then
  installed=1
fi
if [ "$installed" = 1 ] && services_blocked; then
  exit 0
fi
if [ "$installed" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "warning: Debian's ${debian_services[*]} services are not masked: after a reboot they listen on" >&2
    echo "every interface and take the local Prometheus's port. Run 'sudo $0' once." >&2
    exit 0
  fi
  block_services
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is not installed and this is not root: run" >&2
  echo "'sudo apt-get install --no-install-recommends prometheus prometheus-node-exporter prometheus-pushgateway prometheus-alertmanager'" >&2
  echo "(or 'sudo $0'), then 'make run' again" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# temporary, from mlops-assets scripts/setup_prometheus.sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
packages=(prometheus prometheus-node-exporter prometheus-pushgateway prometheus-alertmanager)
echo "installing Debian's ${packages[*]} (server, promtool, node_exporter, Pushgateway, Alertmanager, amtool)..."
# Another apt-get may hold dpkg's lock (on CI, .ci/run's background build of the offline base
# installs debootstrap): wait for it rather than fail.
lock=(-o DPkg::Lock::Timeout=600)
if ! apt-get "${lock[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
  apt-get "${lock[@]}" update -qq
  apt-get "${lock[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
prometheus --version 2>&1 | head -1
block_services
