#!/usr/bin/env python3
"""Reads what `helm template` rendered for scripts/check-chart.sh (needs PyYAML).

    chart-render.py kinds RENDER                 print the kinds, one per line
    chart-render.py config RENDER OUTDIR         write OUTDIR/wxgate.toml and its secret files
    chart-render.py assert-default RENDER        check the default render's promises
    chart-render.py assert-drain RENDER N GRACE  drain_delay_secs = N, grace period GRACE
    chart-render.py assert-dashboard RENDER      the dashboard ConfigMap: sidecar label, JSON

`config` takes the ConfigMap's wxgate.toml and writes every file its secret_file / key_file /
password_file keys name under the Secret's mount path (the Deployment's `secrets` volume):
with the chart's own Secret, its decoded values, and it checks that the Secret holds exactly
the keys the configuration references; with secrets.existingSecret (no Secret rendered),
distinct dummy values of 32 characters.
"""

import base64
import hashlib
import json
import os
import sys
import tomllib

import yaml


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(documents, kind):
    found = [d for d in documents if d["kind"] == kind]
    if len(found) != 1:
        sys.exit(f"expected one {kind}, found {len(found)}")
    return found[0]


def file_refs(table, prefix=""):
    """(toml key path, file path) of every *_file key."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from file_refs(value, f"{prefix}{key}.")
        elif key.endswith("_file") and key != "tls_ca_file":
            yield f"{prefix}{key}", value


def config(render, outdir):
    documents = docs(render)
    # The gateway's ConfigMap (the Grafana dashboard's is another).
    gateway = [d for d in documents if "wxgate.toml" in (d.get("data") or {})]
    text = one(gateway, "ConfigMap")["data"]["wxgate.toml"]
    deployment = one(documents, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "secrets")
    refs = dict(file_refs(tomllib.loads(text)))
    for key, path in refs.items():
        if os.path.dirname(path) != mount.rstrip("/"):
            sys.exit(f"{key} = {path}: not in the Secret's mount path {mount}")
    wanted = {os.path.basename(p) for p in refs.values()}
    secrets = [d for d in documents if d["kind"] == "Secret"]
    if secrets:
        data = secrets[0].get("data") or {}
        if set(data) != wanted:
            sys.exit(
                f"the Secret holds {sorted(data)} but the configuration reads {sorted(wanted)}"
            )
        values = {k: base64.b64decode(v).decode() for k, v in data.items()}
        origin = "the rendered Secret"
    else:
        values = {k: hashlib.sha256(k.encode()).hexdigest()[:32] for k in wanted}
        origin = "dummies (existingSecret)"
    os.makedirs(mount, exist_ok=True)
    for name, value in values.items():
        with open(os.path.join(mount, name), "w") as f:
            f.write(value + "\n")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "wxgate.toml"), "w") as f:
        f.write(text)
    print(f"{len(values)} secret files from {origin}")


def assert_dashboard(render):
    documents = docs(render)
    found = [d for d in documents if "wxgate.json" in (d.get("data") or {})]
    cm = one(found, "ConfigMap")
    if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
        sys.exit(f"the dashboard ConfigMap lacks the sidecar label: {cm['metadata']['labels']}")
    dash = json.loads(cm["data"]["wxgate.json"])
    with open(os.path.join(os.path.dirname(__file__), "..", "helm/wxgate/dashboards/wxgate.json")) as f:
        if json.load(f) != dash:
            sys.exit("the rendered dashboard differs from helm/wxgate/dashboards/wxgate.json")
    print(f"{len(dash['panels'])} panels")


def assert_default(render):
    documents = docs(render)
    problems = []

    def check(ok, what):
        if not ok:
            problems.append(what)

    kinds = {d["kind"] for d in documents}
    for kind in ("Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount",
                 "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        check(kind in kinds, f"no {kind}")
    dep = one(documents, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    check("replicas" not in spec, "replicas set although the HPA owns them")
    check(one(documents, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3, "minReplicas != 3")
    check(spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1},
          "rollingUpdate is not maxUnavailable 0 / maxSurge 1")
    check(pod["terminationGracePeriodSeconds"] == 5 + 10 + 5,
          "terminationGracePeriodSeconds != drain 5 + shutdown 10 + margin 5")
    annotations = spec["template"]["metadata"]["annotations"]
    check("checksum/config" in annotations and "checksum/secret" in annotations,
          "no checksum/config or checksum/secret annotation")
    check(c["args"] == ["serve", "--config", "/etc/wxgate/wxgate.toml"], "unexpected args")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness is not /healthz")
    check(c["startupProbe"]["httpGet"]["path"] == "/healthz", "startup is not /healthz")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is not /readyz")
    sc = c["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True, "root filesystem is writable")
    check(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    check(sc.get("capabilities") == {"drop": ["ALL"]}, "capabilities not all dropped")
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, "not UID 65532")
    check(pod["securityContext"].get("seccompProfile") == {"type": "RuntimeDefault"},
          "no RuntimeDefault seccomp profile")
    check(pod["automountServiceAccountToken"] is False, "service account token mounted")
    check({t["topologyKey"] for t in pod["topologySpreadConstraints"]}
          == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, "no topology spread")
    check(c["resources"].get("requests") and c["resources"].get("limits"), "no requests/limits")
    for d in documents:
        labels = d["metadata"].get("labels", {})
        for label in ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
            check(label in labels, f"{d['kind']} {d['metadata']['name']} lacks {label}")
    # The gateway's ConfigMap (the Grafana dashboard's is another).
    gateway = [d for d in documents if "wxgate.toml" in (d.get("data") or {})]
    text = one(gateway, "ConfigMap")["data"]["wxgate.toml"]
    cfg = tomllib.loads(text)
    check(cfg["server"].get("drain_delay_secs") == 5, "drain_delay_secs is not 5")
    check(cfg["store"]["expected_replicas"] == 7, "expected_replicas != maxReplicas 6 + surge 1")
    check(cfg["store"]["kind"] == "redis", "store is not redis")
    if problems:
        sys.exit("default render: " + "; ".join(problems))
    print("default render: " + ", ".join(sorted(kinds)))


def assert_drain(render, drain, grace):
    documents = docs(render)
    cfg = tomllib.loads(one(documents, "ConfigMap")["data"]["wxgate.toml"])
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    if cfg["server"].get("drain_delay_secs") != int(drain):
        sys.exit(f"drain_delay_secs is {cfg['server'].get('drain_delay_secs')}, expected {drain}")
    if pod["terminationGracePeriodSeconds"] != int(grace):
        sys.exit(f"terminationGracePeriodSeconds is {pod['terminationGracePeriodSeconds']}, "
                 f"expected {grace}")
    print(f"drain_delay_secs = {drain}, terminationGracePeriodSeconds = {grace}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "kinds":
        for d in docs(args[0]):
            print(d["kind"])
    elif cmd == "config":
        config(*args)
    elif cmd == "assert-default":
        assert_default(*args)
    elif cmd == "assert-drain":
        assert_drain(*args)
    elif cmd == "assert-dashboard":
        assert_dashboard(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
