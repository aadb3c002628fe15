#!/bin/sh
# Make the two Debian 12 (bookworm) base images the Dockerfile starts FROM, without any
# container registry: debootstrap a minimal root file system from the Debian archive this
# machine's apt already uses, and `docker import` it.
#
#   fedprune/bookworm:base   debootstrap --variant=minbase bookworm (the build stage)
#   fedprune/bookworm:slim   the same root file system without documentation, man pages,
#                            locales other than C, and apt's package lists (the runtime stage)
#
# An image that already exists is kept (--force remakes both). Needs root, debootstrap and a
# running Docker engine. The archive is the first http(s) Debian mirror in /etc/apt (override
# with FP_DEBIAN_MIRROR=URL); the images' apt sources point to the same archive.
set -eu

prog=base-image.sh
BASE=fedprune/bookworm:base
SLIM=fedprune/bookworm:slim
force=0
case "${1:-}" in
"") ;;
--force) force=1 ;;
-h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "$prog: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

have() { docker image inspect "$1" >/dev/null 2>&1; }
if [ "$force" = 0 ] && have "$BASE" && have "$SLIM"; then
	echo "$prog: $BASE and $SLIM exist (--force remakes them)"
	exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "$prog: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || { echo "$prog: debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "$prog: no Docker engine answers" >&2; exit 1; }

# The Debian archive: the first URI of a bookworm source in this machine's apt configuration.
mirror=${FP_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ && u != "" { print u; exit }')
fi
if [ -z "$mirror" ]; then
	mirror=$(sed -n 's/^deb  *\(\[[^]]*\]  *\)\{0,1\}\(https\{0,1\}:[^ ]*\)  *bookworm .*/\2/p' \
		/etc/apt/sources.list 2>/dev/null | head -n 1)
fi
[ -n "$mirror" ] || { echo "$prog: no Debian bookworm mirror in /etc/apt; set FP_DEBIAN_MIRROR" >&2; exit 1; }
mirror=${mirror%/}

work=$(mktemp -d /var/tmp/fedprune-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/rootfs

echo "$prog: debootstrap bookworm from $mirror (a few minutes)"
start=$(date +%s)
if ! debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" \
	>"$work/debootstrap.log" 2>&1; then
	tail -n 30 "$work/debootstrap.log" >&2
	echo "$prog: debootstrap failed" >&2
	exit 1
fi

# apt inside the images uses the same archive, its security suite, and no recommends.
security=$(printf '%s' "$mirror" | sed 's,/debian$,/debian-security,')
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
SRC
[ "$security" = "$mirror" ] || echo "deb $security bookworm-security main" >>"$root/etc/apt/sources.list"
cat >"$root/etc/apt/apt.conf.d/90fedprune" <<CONF
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
CONF
# A container has no init to tell daemons apart from package scripts: keep services off.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"

import() { # name dir
	tar --numeric-owner --xattrs -C "$2" -c . |
		docker import -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			-c 'CMD ["/bin/bash"]' - "$1" >/dev/null
	echo "$prog: imported $1 ($(docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

import "$BASE" "$root"

# The slim variant: what a program's run time never reads.
# Each package's copyright file stays (the licences ask for it).
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/lintian" \
	"$root/var/cache/debconf/"*-old
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
cat >"$root/etc/dpkg/dpkg.cfg.d/90fedprune-slim" <<CONF
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CONF
import "$SLIM" "$root"
echo "$prog: done in $(( $(date +%s) - start )) s"
