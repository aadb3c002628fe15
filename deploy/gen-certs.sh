#!/bin/sh
# Make the certificates of a fedprune federation with the openssl command-line tool:
#   a CA (ca.crt, ca.key), the server certificate with subject alternative names for every
#   DNS name and IP address clients use to reach it (server.crt, server.key), and one client
#   certificate per client (NAME.crt, NAME.key) whose subject CN is the client's identity.
# Keys are EC P-256 and written with mode 0600. Existing files are kept unless --force.
# See docs/transport.md for where each file goes.
set -eu

prog=gen-certs.sh
usage() {
	cat <<EOF
Usage: $prog OUTDIR [--server-name NAME[,NAME...]] [--server-ip IP[,IP...]]
                    [--clients N | --clients NAME[,NAME...]] [--days N] [--force]

Creates in OUTDIR:
  ca.crt ca.key            the federation CA (keep ca.key offline once done)
  server.crt server.key    the server, with a SAN for each --server-name and --server-ip
  client-1.crt ...         N clients (or one per NAME); the CN is the client identity
Options:
  --server-name LIST  DNS names of the server (comma separated)
  --server-ip LIST    IP addresses of the server (comma separated)
  --clients N|LIST    number of clients (client-1 ... client-N) or their names (default 0)
  --days N            validity of server and client certificates (default 365; CA 3650)
  --force             replace files that exist (otherwise they are kept)
  -h, --help          show this help
At least one --server-name or --server-ip is needed to make the server certificate.
EOF
}
fail() { echo "$prog: $* (see '$prog --help')" >&2; exit 2; }

out=""
names=""
ips=""
clients=""
days=365
force=0
while [ $# -gt 0 ]; do
	case "$1" in
	-h|--help) usage; exit 0 ;;
	--server-name) [ $# -ge 2 ] || fail "--server-name needs a value"; names=$2; shift 2 ;;
	--server-ip) [ $# -ge 2 ] || fail "--server-ip needs a value"; ips=$2; shift 2 ;;
	--clients) [ $# -ge 2 ] || fail "--clients needs a value"; clients=$2; shift 2 ;;
	--days) [ $# -ge 2 ] || fail "--days needs a value"; days=$2; shift 2 ;;
	--force) force=1; shift ;;
	-*) fail "unknown option '$1'" ;;
	*) [ -z "$out" ] || fail "unexpected argument '$1'"; out=$1; shift ;;
	esac
done
[ -n "$out" ] || fail "missing OUTDIR"
[ -n "$names$ips" ] || fail "give at least one --server-name or --server-ip"
case "$days" in ''|*[!0-9]*) fail "--days '$days' is not a whole number" ;; esac
[ "$days" -ge 1 ] && [ "$days" -le 3650 ] || fail "--days '$days' is not in 1..3650"
command -v openssl >/dev/null 2>&1 || { echo "$prog: the openssl command is needed" >&2; exit 1; }

# Client names: a count or a list of identities (A-Z a-z 0-9 . _ @ -, at most 64).
client_list=""
case "$clients" in
'') ;;
*[!0-9]*)
	for c in $(echo "$clients" | tr ',' ' '); do
		case "$c" in
		.*|-*|*[!A-Za-z0-9._@-]*) fail "client name '$c' is not a valid identity" ;;
		esac
		[ ${#c} -le 64 ] || fail "client name '$c' is longer than 64 characters"
		client_list="$client_list $c"
	done
	;;
*)
	[ "$clients" -ge 1 ] && [ "$clients" -le 100000 ] || fail "--clients '$clients' is not in 1..100000"
	i=1
	while [ "$i" -le "$clients" ]; do client_list="$client_list client-$i"; i=$((i + 1)); done
	;;
esac

san=""
for n in $(echo "$names" | tr ',' ' '); do
	case "$n" in *[!A-Za-z0-9.-]*|.*|-*) fail "server name '$n' is not a DNS name" ;; esac
	san="${san:+$san,}DNS:$n"
done
for ip in $(echo "$ips" | tr ',' ' '); do
	case "$ip" in *[!0-9A-Fa-f.:]*|'') fail "server IP '$ip' is not an IP address" ;; esac
	san="${san:+$san,}IP:$ip"
done
# The CN is informational (clients check the SANs); it is limited to 64 characters.
server_cn=$(echo "$names,$ips" | tr ',' '\n' | sed -n '/./{p;q;}')
[ ${#server_cn} -le 64 ] || server_cn="fedprune server"

mkdir -p "$out"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
cat >"$tmp/ext.cnf" <<EOF
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $san
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

made=""
kept=""
made_server=0
newkey() { # path
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>"$tmp/err" ||
		{ cat "$tmp/err" >&2; exit 1; }
	chmod 600 "$1"
}

# The CA. A new CA invalidates every certificate it did not sign, so --force remakes all.
if [ "$force" = 1 ] || [ ! -f "$out/ca.crt" ]; then
	newkey "$out/ca.key"
	openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=fedprune federation CA" \
		-config "$tmp/ext.cnf" -extensions ca_ext -out "$out/ca.crt" 2>"$tmp/err" ||
		{ cat "$tmp/err" >&2; exit 1; }
	chmod 644 "$out/ca.crt"
	made="$made ca.crt ca.key"
	force=1
else
	kept="$kept ca.crt"
fi

issue() { # name cn extension-section
	if [ "$force" = 0 ] && [ -f "$out/$1.crt" ]; then
		kept="$kept $1.crt"
		return
	fi
	[ -f "$out/ca.key" ] || { echo "$prog: $out/ca.key is missing: cannot sign $1.crt" >&2; exit 1; }
	newkey "$out/$1.key"
	openssl req -new -key "$out/$1.key" -subj "/CN=$2" -config "$tmp/ext.cnf" \
		-out "$tmp/$1.csr" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
	openssl x509 -req -in "$tmp/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
		-extfile "$tmp/ext.cnf" -extensions "$3" -out "$out/$1.crt" 2>"$tmp/err" ||
		{ cat "$tmp/err" >&2; exit 1; }
	chmod 644 "$out/$1.crt"
	made="$made $1.crt $1.key"
	[ "$1" != server ] || made_server=1
}

issue server "$server_cn" server_ext
for c in $client_list; do
	issue "$c" "$c" client_ext
done

echo "$prog: in $out"
[ -z "$made" ] || echo "  created:$made"
[ -z "$kept" ] || echo "  kept (exist; --force replaces):$kept"
[ "$made_server" = 0 ] || echo "  server subject alternative names: $san"
echo "  server: ca.crt server.crt server.key; each client: ca.crt NAME.crt NAME.key"
