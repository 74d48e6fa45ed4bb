"""deploy/kubernetes: valid for Kubernetes, and true to the bridge it runs.

There is no cluster here, so every manifest is validated against the Kubernetes API's own
schemas, offline and strictly (unknown fields are errors), with `kubernetes-validate`
(the test extra): for the newest release it knows and for 1.28, the oldest still in wide
use. Then what a cluster would do is replayed with the real parts: the container's shell
line computes each pod's `--shard` from its name, the configuration in the ConfigMap
passes `modbus-bridge check` for every shard with the Secret's values, every shard serves
its metrics on the port the probes ask, and the names the manifests refer to exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import __version__

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
MANIFESTS = ("configmap.yaml", "secret.yaml", "service.yaml", "statefulset.yaml")
OLDEST = "1.28.0"

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the [test] extra (make test)"
)


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def _docs() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in map(_load, MANIFESTS)}


def _container() -> dict[str, Any]:
    [container] = _docs()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("version", [kubernetes_validate.latest_version(), OLDEST])
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_for_the_kubernetes_api(name: str, version: str) -> None:
    kubernetes_validate.validate(_load(name), version, strict=True)  # raises on any error


def test_validation_can_fail() -> None:
    """The checker catches what it is meant to: an unknown field, a wrong type."""
    broken = _load("statefulset.yaml")
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST, strict=True)
    broken = _load("statefulset.yaml")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted([*MANIFESTS, "kustomization.yaml"])


def _shard_of(pod: str, tmp_path: Path) -> list[str]:
    """What the container's shell line runs in pod `pod`: the bridge's arguments."""
    container = _container()
    assert container["command"] == ["/bin/sh", "-c"]
    [line] = container["args"]
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "modbus-bridge").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "modbus-bridge").chmod(0o755)
    env = {
        "PATH": f"{fake}:/usr/bin:/bin",
        "POD_NAME": pod,
        "SHARDS": _env(container)["SHARDS"],
    }
    sh = shutil.which("sh") or "/bin/sh"
    done = subprocess.run(
        [sh, "-c", line], env=env, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.splitlines()


def test_each_pod_runs_the_shard_of_its_ordinal(tmp_path: Path) -> None:
    statefulset = _docs()["StatefulSet"]
    replicas = statefulset["spec"]["replicas"]
    assert _env(_container())["SHARDS"] == str(replicas)  # N is the number of pods
    name = statefulset["metadata"]["name"]
    for ordinal in range(replicas):
        args = _shard_of(f"{name}-{ordinal}", tmp_path)
        assert args == [
            "run", "-c", "/etc/modbus-bridge/config.yaml",
            "--shard", f"{ordinal + 1}/{replicas}",
        ]  # fmt: skip


def _check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_configmap_passes_check_for_every_shard_on_the_probed_port(
    tmp_path: Path,
) -> None:
    docs = _docs()
    config = tmp_path / "config.yaml"
    config.write_text(docs["ConfigMap"]["data"]["config.yaml"])
    secret = docs["Secret"]["stringData"]
    env = {**os.environ, **secret}
    env.pop("BRIDGE_SHARD", None)
    container = _container()
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    annotations = docs["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    [service_port] = docs["Service"]["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (port, "metrics")
    replicas = docs["StatefulSet"]["spec"]["replicas"]
    hosts = 0
    for k in range(1, replicas + 1):
        done = _check("-c", str(config), "--shard", f"{k}/{replicas}", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"metrics: http://0.0.0.0:{port}/metrics" in done.stdout
        hosts += sum(1 for line in done.stdout.splitlines() if line.startswith("host "))
        assert secret["MQTT_PASSWORD"] not in done.stdout
    assert hosts == 4  # every host in exactly one shard
    # Without the Secret the configuration does not load: the ${VAR}s come from it.
    bare = {k: v for k, v in env.items() if k not in secret}
    assert _check("-c", str(config), env=bare).returncode == 2


def test_names_the_manifests_refer_to_exist() -> None:
    docs = _docs()
    statefulset = docs["StatefulSet"]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    container = _container()
    assert spec["serviceName"] == docs["Service"]["metadata"]["name"]
    labels = spec["selector"]["matchLabels"]
    assert labels.items() <= spec["template"]["metadata"]["labels"].items()
    assert docs["Service"]["spec"]["selector"] == labels
    [volume] = pod["volumes"]
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    [mount] = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == "/etc/modbus-bridge"
    [source] = container["envFrom"]
    assert source["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
    # The image of deploy/docker at this version, as its user; SIGTERM within the grace
    assert container["image"] == f"modbus-bridge:{__version__}"
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert f"--uid {pod['securityContext']['runAsUser']} " in dockerfile
    assert pod["terminationGracePeriodSeconds"] > 5
