#!/usr/bin/env bash
# End to end on a real (kind) cluster, for machines with Docker and kind:
#   create a cluster, load the images `make images` built, install the operator (Helm chart), apply the
#   quickstart sample (CPU runtime), wait for Ready, chat through a port-forward with the openai client,
#   delete it and check that its children are gone, then delete the cluster.
# Usage: make images; tests/e2e/kind.sh   (KEEP_CLUSTER=1 keeps the cluster for debugging)
# It skips (exit 0, with the reason) where Docker, kind, kubectl or helm is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "SKIP tests/e2e/kind.sh: $*"; exit 0; }
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (this e2e needs Docker, kind, kubectl and helm)"
done
docker info >/dev/null 2>&1 || skip "the Docker daemon is not reachable"

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REPO=${IMAGE_REPO:-ghcr.io/chatmodel}
IMAGES=("$REPO/operator:$VERSION" "$REPO/runtime:$VERSION")
CLUSTER=${KIND_CLUSTER:-chatmodel-e2e}
NS=chatmodel-e2e
PY=${PY:-.venv/bin/python}
MODEL=tidewell-support

for image in "${IMAGES[@]}"; do
  docker image inspect "$image" >/dev/null 2>&1 || {
    # `make images` builds with podman; hand the images over to Docker.
    command -v podman >/dev/null || { echo "FAIL: $image not built (run make images)"; exit 1; }
    CONTAINERS_CONF=$PWD/images/containers.conf podman --cgroup-manager=cgroupfs save "$image" | docker load
  }
done

cleanup() {
  [ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  [ -n "${PF_PID:-}" ] && kill "$PF_PID" 2>/dev/null || true
}
trap cleanup EXIT

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
for image in "${IMAGES[@]}"; do kind load docker-image --name "$CLUSTER" "$image"; done

helm install chatmodel-operator charts/chatmodel-operator --namespace chatmodel-system --create-namespace \
  --wait --timeout 5m
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" apply -f manifests/samples/quickstart.yaml
# The quickstart fine-tunes first (a few minutes on CPU), then serves.
kubectl -n "$NS" wait "chatmodel/$MODEL" --for=jsonpath='{.status.phase}'=Ready --timeout=30m

PORT=18000
kubectl -n "$NS" port-forward "service/$MODEL" "$PORT:8000" >/dev/null &
PF_PID=$!
for _ in $(seq 60); do curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break; sleep 1; done
"$PY" - "$PORT" "$MODEL" <<'PYEOF'
import sys

import openai

port, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=2)
ask = [{"role": "user", "content": "What is Tidewell?"}]
reply = client.chat.completions.create(model=model, messages=ask, max_tokens=32)
assert reply.choices[0].message.content, reply
chunks = client.chat.completions.create(model=model, messages=ask, max_tokens=32, stream=True)
assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "empty stream"
print("chat ok:", reply.choices[0].message.content)
PYEOF
kill "$PF_PID"; PF_PID=

kubectl -n "$NS" delete chatmodel "$MODEL" --wait --timeout=2m
# Owner references: every child goes with the ChatModel.
for _ in $(seq 60); do
  left=$(kubectl -n "$NS" get deployments,services,jobs,hpa,pdb -l "app.kubernetes.io/instance=$MODEL" -o name)
  [ -z "$left" ] && break
  sleep 2
done
[ -z "$left" ] || { echo "FAIL: children left after delete: $left"; exit 1; }
helm uninstall chatmodel-operator --namespace chatmodel-system --wait
echo "PASS tests/e2e/kind.sh"
