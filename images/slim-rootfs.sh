#!/usr/bin/env bash
# Strip a debootstrap'ed Debian root down to what a Python service needs: the images run a Python
# interpreter, never apt, dpkg or perl, and nobody reads man pages, docs or translations in a pod.
set -euo pipefail
root=${1:?usage: slim-rootfs.sh ROOTFS}
cd "$root"
rm -rf usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/lintian \
  usr/share/common-licenses usr/share/perl* usr/lib/x86_64-linux-gnu/perl* usr/bin/perl* \
  usr/share/zsh usr/share/bash-completion usr/share/bug usr/share/menu \
  var/cache/apt/* var/lib/apt/lists/* var/cache/debconf/*-old var/log/* \
  usr/lib/python3.11/test usr/lib/python3.11/idlelib usr/lib/python3.11/tkinter usr/lib/python3.11/turtledemo \
  usr/lib/python3.11/lib2to3/tests usr/lib/python3.11/ensurepip usr/lib/python3.11/pydoc_data
# apt and dpkg with their databases: package management happens at build time, on the host.
rm -rf usr/bin/apt* usr/lib/apt usr/lib/x86_64-linux-gnu/libapt* etc/apt var/lib/apt var/cache/apt \
  usr/bin/dpkg* usr/share/dpkg var/lib/dpkg usr/sbin/dpkg* usr/share/debconf usr/share/perl5
