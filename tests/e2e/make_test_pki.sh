#!/usr/bin/env bash
# Makes the certificates the security tests use, with the openssl command,
# into the folder given (created if missing):
#   ca.pem, ca.key                 "ssmserve test CA"
#   other-ca.pem, other-ca.key     another CA nobody trusts
#   server.pem, server.key         SAN 127.0.0.1, localhost (by ca)
#   server2.pem, server2.key       the same names by other-ca (rotation)
#   client.pem, client.key         SAN client-a.test (by ca)
#   client-b.pem, client-b.key     SAN client-b.test (by ca)
#   expired.pem, expired.key       SAN client-a.test, valid only in 2020 (by ca)
#   stranger.pem, stranger.key     SAN client-a.test (by other-ca)
# Keys are P-256; everything but the expired one is valid for a day.
set -euo pipefail
out=${1:?usage: make_test_pki.sh DIR}
mkdir -p "$out"
cd "$out"

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null; }

ca() {  # name subject
  key "$1"
  openssl req -x509 -new -key "$1.key" -sha256 -days 2 -subj "/CN=$2" -out "$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  mkdir -p "$1.db"
  : > "$1.db/index.txt"
  echo 1000 > "$1.db/serial"
  cat > "$1.cnf" <<CNF
[ca]
default_ca = this
[this]
database = $PWD/$1.db/index.txt
serial = $PWD/$1.db/serial
new_certs_dir = $PWD/$1.db
certificate = $PWD/$1.pem
private_key = $PWD/$1.key
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
CNF
}

leaf() {  # name ca san usage [startdate enddate]
  key "$1"
  openssl req -new -key "$1.key" -subj "/CN=$1" -addext "subjectAltName=$3" \
    -addext "extendedKeyUsage=$4" -out "$1.csr"
  local dates=(-days 1)
  if [[ $# -ge 6 ]]; then dates=(-startdate "$5" -enddate "$6"); fi
  openssl ca -batch -config "$2.cnf" -in "$1.csr" -out "$1.pem" -notext "${dates[@]}" 2>/dev/null
  rm -f "$1.csr"
}

ca ca "ssmserve test CA"
ca other-ca "ssmserve other CA"
leaf server ca "IP:127.0.0.1,DNS:localhost" serverAuth
leaf server2 other-ca "IP:127.0.0.1,DNS:localhost" serverAuth
leaf client ca "DNS:client-a.test" clientAuth
leaf client-b ca "DNS:client-b.test" clientAuth
leaf expired ca "DNS:client-a.test" clientAuth 20200101000000Z 20200102000000Z
leaf stranger other-ca "DNS:client-a.test" clientAuth
