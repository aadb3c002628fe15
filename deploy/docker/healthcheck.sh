#!/bin/bash
# Container health check of a fedprune daemon (the image's HEALTHCHECK). Finds the daemon
# among the container's processes, then:
#   - re-validates its configuration file with --check-config (a file, certificate path or
#     value that went bad makes the container unhealthy);
#   - for fedprune-server, opens a TCP connection to the configured [server] port on the
#     loopback address (bash's /dev/tcp; the TLS handshake is not attempted).
# Exits 0 when healthy, 1 otherwise, with one line on stdout saying why. A container that
# runs neither daemon (the fedprune tool, a shell) is reported healthy.
set -u

daemon="" conf=""
for p in /proc/[0-9]*; do
	[ -r "$p/cmdline" ] || continue
	mapfile -d '' -t argv <"$p/cmdline" 2>/dev/null || continue
	[ "${#argv[@]}" -gt 0 ] || continue
	case "${argv[0]##*/}" in
	fedprune-server | fedprune-client) ;;
	*) continue ;;
	esac
	daemon=${argv[0]}
	for ((i = 1; i < ${#argv[@]}; i++)); do
		case "${argv[i]}" in
		-c | --config) conf=${argv[i + 1]:-} ;;
		--config=*) conf=${argv[i]#--config=} ;;
		esac
	done
	break
done
if [ -z "$daemon" ]; then
	echo "no fedprune daemon in this container: nothing to check"
	exit 0
fi

args=(--check-config)
[ -n "$conf" ] && args=(--config "$conf" --check-config)
if ! out=$("$daemon" "${args[@]}" 2>&1); then
	echo "configuration check failed: $out"
	exit 1
fi

if [ "${daemon##*/}" = fedprune-server ]; then
	port=7443
	if [ -n "$conf" ]; then
		# The port key of the [server] section, if the file sets it.
		p=$(awk -F= '/^[ \t]*\[/ { s = $0; gsub(/[][ \t]/, "", s) }
			s == "server" && $1 ~ /^[ \t]*port[ \t]*$/ { gsub(/[ \t]/, "", $2); print $2 }' "$conf")
		[ -n "$p" ] && port=$p
	fi
	if ! timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
		echo "fedprune-server: port $port does not accept connections"
		exit 1
	fi
	echo "fedprune-server: configuration valid, port $port open"
else
	echo "fedprune-client: configuration valid"
fi
exit 0
