#!/usr/bin/env bash
# Makes the cluster CA and the certificates this directory's manifests mount, into
# deploy/k8s/certs/ (git-ignored): ca.pem + ca.key (keep ca.key offline afterwards), one node
# certificate per StatefulSet pod (herald-node-<i>: the node id is the certificate's name),
# one control certificate shared by the control replicas, one operator certificate for you.
# kustomization.yaml turns them into the Secrets herald-node-certs and herald-control-certs.
#   NODES=3 HERALD=herald deploy/k8s/make-certs.sh && kubectl apply -k deploy/k8s
# Existing files are kept: re-run after raising NODES to issue only the new ones (then add
# them to kustomization.yaml).
set -euo pipefail
cd "$(dirname "$0")"
herald=${HERALD:-herald}
nodes=${NODES:-3}
dir=certs
[ -f "$dir/ca.pem" ] || "$herald" certs init --dir "$dir" --cluster herald-k8s
for i in $(seq 0 $((nodes - 1))); do
  name="herald-node-$i"
  [ -f "$dir/node-$name.pem" ] ||
    "$herald" certs issue --dir "$dir" --node "$name" --san "$name.herald-node.herald.svc"
done
[ -f "$dir/control-control-plane.pem" ] ||
  "$herald" certs issue --dir "$dir" --control control-plane --san herald-control.herald.svc
[ -f "$dir/operator-${USER:-admin}.pem" ] ||
  "$herald" certs issue --dir "$dir" --operator "${USER:-admin}"
# The HMAC key of the contact-point indexes (the same on every node; docs/security.md).
[ -f "$dir/contact-index-secret" ] ||
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/contact-index-secret")
echo "certificates in $(pwd)/$dir; now: kubectl apply -k $(pwd)"
