#!/bin/sh
# Print TF Serving's SSLConfig text file (what --ssl_config_file reads: the PEM contents inline)
# from PEM files, for the `model-server-tls` Secret (see k8s/README.md, "TLS and bearer tokens"):
#
#   k8s/components/secure/ssl-config.sh tls.key tls.crt ca.crt > ssl.config
#   k8s/components/secure/ssl-config.sh tls.key tls.crt ca.crt --client-verify > ssl.config
#
# ca.crt is the CA that signed tls.crt: the probe checks the server against it, and with
# --client-verify (mutual TLS) the server accepts only clients whose certificates it signed.
set -eu

if [ "$#" -lt 3 ] || [ "$#" -gt 4 ] || { [ "$#" -eq 4 ] && [ "$4" != "--client-verify" ]; }; then
    echo "usage: $0 SERVER_KEY SERVER_CERT CA_CERT [--client-verify]" >&2
    exit 2
fi

# One text-format string per PEM file: each line followed by a literal \n escape.
pem() {
    awk '{ printf "%s\\n", $0 }' "$1"
}

printf 'server_key: "%s"\n' "$(pem "$1")"
printf 'server_cert: "%s"\n' "$(pem "$2")"
printf 'custom_ca: "%s"\n' "$(pem "$3")"
if [ "$#" -eq 4 ]; then
    printf 'client_verify: true\n'
else
    printf 'client_verify: false\n'
fi
