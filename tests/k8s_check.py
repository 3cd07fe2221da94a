"""Checks packaging/kubernetes against the official Kubernetes schema
(PyPI kubernetes-validate, offline: it bundles the schemas) and what the
schema cannot see: every volumeMount names a volume of its pod. The Helm
values for the prometheus-node-exporter chart are checked as the pod they
add to (their init container and sidecar, with the volumes the chart makes
of sidecarVolumeMount and sidecarHostVolumeMounts).

usage: k8s_check.py DIR  (run by tests/e2e/kubernetes.rs)"""
import glob
import os
import sys

import kubernetes_validate
import yaml

VERSIONS = ["1.28.0", kubernetes_validate.utils.latest_version()]


def pod_specs(obj):
    kind = obj.get("kind")
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        yield obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield obj["spec"]


def check_mounts(where, spec):
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                raise SystemExit(f"{where}: container {c['name']} mounts volume {m['name']!r}, which the pod does not define")


def validate(where, obj):
    for v in VERSIONS:
        try:
            kubernetes_validate.validate(obj, v, True)
        except kubernetes_validate.ValidationError as e:
            raise SystemExit(f"{where}: {obj.get('kind')}/{obj['metadata'].get('name')} against Kubernetes {v}: {e.message} at {'.'.join(map(str, e.path))}")
    for spec in pod_specs(obj):
        check_mounts(where, spec)
    print(f"ok {where}: {obj['kind']}/{obj['metadata']['name']} ({', '.join(VERSIONS)})")


def values_pod(values):
    """The pod spec the chart renders from these values (the parts they add)."""
    volumes = [{"name": m["name"], "emptyDir": {}} for m in values.get("sidecarVolumeMount", [])]
    volumes += [{"name": m["name"], "hostPath": {"path": m["hostPath"]}} for m in values.get("sidecarHostVolumeMounts", [])]
    shared = [{k: m[k] for k in ("name", "mountPath", "readOnly") if k in m} for m in values.get("sidecarVolumeMount", [])]
    host = [{k: m[k] for k in ("name", "mountPath", "readOnly", "mountPropagation") if k in m} for m in values.get("sidecarHostVolumeMounts", [])]
    sidecars = [dict(s, volumeMounts=shared + host) for s in values.get("sidecars", [])]
    exporter = {"name": "node-exporter", "image": "quay.io/prometheus/node-exporter", "args": values.get("extraArgs", []),
                "volumeMounts": [dict(m, readOnly=True) for m in shared]}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "prometheus-node-exporter", "namespace": "longconn"},
            "spec": {"selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}},
                                  "spec": {"hostPID": values.get("hostPID", False), "hostNetwork": values.get("hostNetwork", False),
                                           "initContainers": values.get("extraInitContainers", []),
                                           "containers": [exporter] + sidecars, "volumes": volumes}}}}


def main(root):
    n = 0
    for path in sorted(glob.glob(os.path.join(root, "*.yaml"))):
        with open(path) as f:
            for obj in yaml.safe_load_all(f):
                if obj:
                    validate(os.path.basename(path), obj)
                    n += 1
    for path in sorted(glob.glob(os.path.join(root, "helm", "*values.yaml"))):
        with open(path) as f:
            validate(os.path.relpath(path, root), values_pod(yaml.safe_load(f)))
            n += 1
    print(f"{n} objects valid")


if __name__ == "__main__":
    main(sys.argv[1])
