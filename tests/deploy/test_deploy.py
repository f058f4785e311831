"""Deployment files, checked without a Docker engine or a cluster."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from ..conftest import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
COMPOSE_SCHEMA = os.path.join(ROOT, "..", "shared", "data", "compose-spec.json")
CRD_REQUIRED = {  # kinds without a built-in schema: their required fields
    "ServiceMonitor": [("spec", "selector"), ("spec", "endpoints")],
    "ScaledObject": [("spec", "scaleTargetRef", "name"), ("spec", "triggers")],
}


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if not found:
        pytest.fail(f"{name} is not installed: `make test` installs it (see the Makefile's tools target)")
    return found


def render(tmp_path, overlay: str, components: tuple[str, ...] = ()) -> list[dict]:
    target = os.path.join(DEPLOY, "k8s", "overlays", overlay)
    if components:  # an overlay of the overlay, adding optional components
        target = tmp_path / f"{overlay}-{'-'.join(components)}"
        shutil.copytree(os.path.join(DEPLOY, "k8s"), tmp_path / "k8s")
        target = tmp_path / "k8s" / "overlays" / f"{overlay}-extra"
        target.mkdir()
        (target / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"../{overlay}"], "components": [f"../../components/{c}" for c in components]}))
    out = subprocess.run([tool("kubectl"), "kustomize", str(target)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


VARIANTS = [("cpu", ()), ("gpu", ()), ("cpu", ("keda", "ingress"))]


@pytest.mark.parametrize("overlay, components", VARIANTS, ids=["cpu", "gpu", "cpu+keda+ingress"])
def test_rendered_manifests_validate(tmp_path, overlay, components):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    docs = render(tmp_path, overlay, components)
    kinds = [d["kind"] for d in docs]
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"} <= set(kinds)
    assert ("ScaledObject" in kinds) == ("keda" in components)
    assert ("HorizontalPodAutoscaler" in kinds) != ("keda" in components), "KEDA replaces the HPA"
    version = latest_version()
    for doc in docs:
        if doc["kind"] in CRD_REQUIRED:
            for path in CRD_REQUIRED[doc["kind"]]:
                node = doc
                for key in path:
                    assert key in node, f"{doc['kind']} lacks {'.'.join(path)}"
                    node = node[key]
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_gpu_overlay_requests_a_gpu_and_drains(tmp_path):
    deployment = next(d for d in render(tmp_path, "gpu") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    timeout = float(container["args"][container["args"].index("--shutdown-timeout") + 1])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > timeout + pre_stop, "the grace period must cover the drain"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert any(e["name"] == "KERNELSERVE_API_KEY" and "secretKeyRef" in e["valueFrom"] for e in container["env"])


def test_promtool_checks_config_and_rules(tmp_path):
    promtool = tool("promtool")
    subprocess.run([promtool, "check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")], check=True,
                   capture_output=True)
    subprocess.run([promtool, "check", "rules", os.path.join(DEPLOY, "prometheus", "alerts.yml")], check=True,
                   capture_output=True)


def exported_series(metrics_text: str) -> set[str]:
    """Every series name a /metrics page can produce, from its TYPE lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, flags=re.M):
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""], "summary": ["", "_sum", "_count"]}.get(kind, [""])
        names.update(name.removesuffix("_total") + s if kind == "counter" else name + s for s in suffixes)
    return names


def test_grafana_dashboard_queries_real_metrics(server):
    import httpx

    with open(os.path.join(DEPLOY, "grafana", "dashboards", "kernelserve.json")) as f:
        dashboard = json.load(f)
    exported = exported_series(httpx.get(server.url + "/metrics").text)
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus", "alerts.yml")))
    queries += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for q in queries for m in re.findall(r"kernelserve:[a-z0-9_]+", q)}
    assert used and not used - exported, f"queried but not exported: {sorted(used - exported)}"


def serve_flags() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "service", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z-]+", out))


def dockerfile_entrypoint(path: str) -> list[str]:
    text = open(path).read()
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, flags=re.M).group(1))


def test_dockerfiles_and_manifests_use_real_flags(tmp_path):
    flags = serve_flags()
    for name in ("Dockerfile", "Dockerfile.cpu"):
        entry = dockerfile_entrypoint(os.path.join(DEPLOY, "docker", name))
        assert entry[:2] == ["kernelserve", "serve"]
        assert {a for a in entry if a.startswith("--")} <= flags
        env_flags = re.findall(r"KERNELSERVE_([A-Z_]+)=", open(os.path.join(DEPLOY, "docker", name)).read())
        assert {"--" + e.lower().replace("_", "-") for e in env_flags} <= flags
    for overlay in ("cpu", "gpu"):
        container = next(d for d in render(tmp_path, overlay) if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert {a for a in container["args"] if a.startswith("--")} <= flags
        assert {"--" + e["name"].removeprefix("KERNELSERVE_").lower().replace("_", "-") for e in container["env"]} <= flags


def test_compose_validates_and_matches_the_images():
    if not os.path.exists(COMPOSE_SCHEMA):
        pytest.skip(f"the Compose Specification schema is not at {COMPOSE_SCHEMA}")
    import jsonschema

    compose = yaml.safe_load(open(os.path.join(DEPLOY, "compose.yaml")))
    jsonschema.validate(compose, json.load(open(COMPOSE_SCHEMA)))
    ks = compose["services"]["kernelserve"]
    dockerfile = os.path.join(DEPLOY, ks["build"]["context"], ks["build"]["dockerfile"])
    assert os.path.exists(dockerfile)
    assert {a for a in ks["command"] if a.startswith("--")} <= serve_flags()
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            assert os.path.exists(os.path.join(DEPLOY, volume.split(":")[0])), volume
