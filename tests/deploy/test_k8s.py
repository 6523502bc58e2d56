"""deploy/k8s: the manifests against the Kubernetes schemas (kubernetes-validate, offline) and
against the service they deploy: probe paths, environment names, ports, selectors, drain time.

No cluster runs here (no API server, no Docker engine), so everything is checked from the files.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import CONFIG_ENV, ServingConfig, load_serving_config
from service.experiment.live import Experiment
from service.predictor import Predictor
from service.predlog import PredictionLog
from service.shadow import ShadowScorer
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
# The Kubernetes version the manifests are validated against: the newest minor that every large
# managed offering had in standard support when this was written (kubernetes-validate 1.37 ships
# 1.25-1.37), and the oldest the README promises. Both must hold.
KUBERNETES_VERSION = "1.34.0"
OLDEST_KUBERNETES_VERSION = "1.30.0"
CORE_FILES = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "hpa-custom-metric.yaml"]
# Files kept out of the default kustomization on purpose (its header comment says why).
EXTRA_FILES = {"servicemonitor.yaml", "hpa-custom-metric.yaml", "prometheus-adapter-values.yaml"}


def _load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc is not None]


def _one(name: str) -> dict[str, Any]:
    docs = _load(name)
    assert len(docs) == 1, f"{name} should hold one object"
    return docs[0]


def _container() -> dict[str, Any]:
    (container,) = _one("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _container()["env"]}


def _serving() -> ServingConfig:
    return load_serving_config(K8S / "serving.toml")


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, OLDEST_KUBERNETES_VERSION])
@pytest.mark.parametrize("name", CORE_FILES)
def test_core_objects_are_valid_kubernetes(name: str, version: str) -> None:
    for doc in _load(name):
        kubernetes_validate.validate(doc, version, strict=True)  # unknown fields fail too


def test_the_validator_rejects_a_broken_deployment() -> None:
    broken = copy.deepcopy(_one("deployment.yaml"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    del broken["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=False)


def test_kustomization_lists_files_that_exist_and_no_file_is_forgotten() -> None:
    kustomization = _one("kustomization.yaml")
    listed = set(kustomization["resources"])
    generated = {f for gen in kustomization["configMapGenerator"] for f in gen["files"]}
    for name in listed | generated:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    assert not listed & EXTRA_FILES
    on_disk = {p.name for p in K8S.iterdir() if p.is_file()} - {"kustomization.yaml"}
    assert on_disk == listed | generated | EXTRA_FILES, "a file neither listed nor explained"
    (image,) = kustomization["images"]
    assert image["name"] == _container()["image"]


def test_k8s_serving_config_is_the_shipped_one_but_for_the_thread_count() -> None:
    shipped = tomllib.loads((REPO / "configs" / "serving.toml").read_text())
    k8s = tomllib.loads((K8S / "serving.toml").read_text())
    assert shipped.pop("intra_op_threads") == 0 and k8s.pop("intra_op_threads") == 1
    assert k8s == shipped
    settings = _serving()  # and it is a valid serving config
    assert settings.ort_threads() == 1  # not the node's core count


def test_serving_config_comes_from_the_configmap_at_the_path_the_env_names() -> None:
    env = _env()
    path = Path(env[CONFIG_ENV]["value"])
    mounts = {m["name"]: m for m in _container()["volumeMounts"]}
    volumes = {v["name"]: v for v in _one("deployment.yaml")["spec"]["template"]["spec"]["volumes"]}
    (name,) = [n for n, v in volumes.items() if "configMap" in v]
    assert mounts[name]["mountPath"] == str(path.parent) and mounts[name]["readOnly"]
    (generator,) = _one("kustomization.yaml")["configMapGenerator"]
    assert volumes[name]["configMap"]["name"] == generator["name"]
    assert generator["files"] == [path.name]  # the key kustomize gives the file is its name


def test_env_names_are_those_the_service_reads() -> None:
    env = _env()
    settings = _serving()
    secrets = {
        settings.experiment.id_key_env: "tuneserve-keys",
        settings.admin_token_env: "tuneserve-keys",
        settings.store.url_env: "tuneserve-store",
    }
    for name, secret in secrets.items():
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret, name
        assert "value" not in env[name], f"{name} must come from a Secret, not the manifest"
    tuneserve_vars = {n for n in env if n.startswith("TUNESERVE_")}
    assert tuneserve_vars == set(secrets) | {CONFIG_ENV}
    # BentoML respawns dead workers unless either is set (bentoml.serving.running_inside_container)
    assert not {"BENTOML_CONTAINERIZED", "BENTOCLOUD_DEPLOYMENT_URL"} & set(env)


def _dockerfile_cpu_stage() -> str:
    return (REPO / "Dockerfile").read_text().split(" AS cpu", 1)[1]


def test_ports_agree_with_the_dockerfile_and_the_service() -> None:
    exposed = {int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", _dockerfile_cpu_stage(), re.M)}
    (port,) = _container()["ports"]
    assert {port["containerPort"]} == exposed
    args = _container()["args"]
    assert int(args[args.index("--port") + 1]) == port["containerPort"]
    (service_port,) = _one("service.yaml")["spec"]["ports"]
    target = service_port["targetPort"]
    assert target in (port["name"], port["containerPort"])
    cmd = re.search(r"^CMD\s+(\[.*\])", _dockerfile_cpu_stage(), re.M)
    assert cmd and args[: len(yaml.safe_load(cmd.group(1)))] == yaml.safe_load(cmd.group(1)), (
        "the Deployment's args start with the Dockerfile's CMD"
    )


def test_probes_use_the_named_port_and_the_health_endpoints() -> None:
    container = _container()
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == container["ports"][0]["name"]
        paths[probe] = get["path"]
    # tests/deploy/test_k8s_server.py checks that the running service answers these paths
    assert paths == {
        "startupProbe": "/livez",
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
    }
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "room to load models"


def test_service_monitor_and_selectors_match() -> None:
    deployment = _one("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = _one("service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["type"] == "ClusterIP"

    monitor = _one("servicemonitor.yaml")
    assert (
        monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    )
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"

    pdb = _one("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for name in ("hpa.yaml", "hpa-custom-metric.yaml"):
        hpa = _one(name)
        assert hpa["metadata"]["name"] == "tuneserve", (
            "both HPAs share a name: one replaces the other"
        )
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
            deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"],
        )  # fmt: skip
        assert hpa["spec"]["minReplicas"] >= 2, "one replica left during a disruption"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_custom_metric_is_one_the_service_exports_and_the_adapter_serves() -> None:
    from service import metrics

    exported = {metrics.INFLIGHT._name, metrics.REQUESTS._name + "_total"}
    rules = _one("prometheus-adapter-values.yaml")["rules"]["custom"]
    served = {}
    for rule in rules:
        series = rule["seriesQuery"].split("{", 1)[0]
        assert series in exported, (
            f"the adapter rule reads {series}, which the service never exports"
        )
        served[rule["name"]["as"]] = series
    text = (K8S / "hpa-custom-metric.yaml").read_text()
    hpa = _one("hpa-custom-metric.yaml")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names == ["tuneserve_inflight_requests"]
    assert set(re.findall(r"name: (tuneserve_\w+)", text)) <= set(served), "HPA metrics not served"


def _drain_s() -> float:
    """The service's worst-case time from SIGTERM to exit: requests in flight (bounded by the
    Deployment's --timeout-graceful-shutdown), then Predictor.close: the experiment's state
    poller's join, the shadow scorer (enqueue + join, each with its timeout) and the prediction
    log's flush."""
    closes = inspect.getsource(Predictor.close)
    assert "self.experiment.close()" in closes, "Predictor.close no longer closes the experiment"
    args = _container()["args"]
    in_flight = float(args[args.index("--timeout-graceful-shutdown") + 1])
    poller = re.search(
        r"self\._poller\.join\((\d+(?:\.\d+)?)\)", inspect.getsource(Experiment.close)
    )
    assert poller, "Experiment.close no longer joins the poller with a literal timeout: update this"
    shadow = inspect.signature(ShadowScorer.close).parameters["timeout_s"].default
    log = inspect.signature(PredictionLog.close).parameters["timeout_s"].default
    return in_flight + float(poller.group(1)) + 2 * shadow + log


def test_grace_period_covers_the_pre_stop_sleep_and_the_drain() -> None:
    spec = _one("deployment.yaml")["spec"]["template"]["spec"]
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5, "kube-proxy and load balancers need a few seconds to drop the pod"
    assert spec["terminationGracePeriodSeconds"] > pre_stop + _drain_s()
    args = _container()["args"]
    in_flight = float(args[args.index("--timeout-graceful-shutdown") + 1])
    assert in_flight > _serving().limits.deadline_ms / 1000, "predictions in flight finish"


def test_runs_as_the_image_user_on_a_read_only_root() -> None:
    uid = re.search(r"useradd\b.*--uid\s+(\d+)", _dockerfile_cpu_stage())
    pod = _one("deployment.yaml")["spec"]["template"]["spec"]
    assert uid and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = _container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == [
        "ALL"
    ]
    # every place the service writes is a writable volume: BENTOML_HOME (BentoML puts the
    # Prometheus multiprocess directory, and so the workers' ready marks, inside it) and /tmp
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"] for m in _container()["volumeMounts"] if "emptyDir" in volumes[m["name"]]
    }
    home = _env()["BENTOML_HOME"]["value"]
    assert {home, "/tmp"} <= writable
    env_home = re.search(r"BENTOML_HOME=(\S+)", _dockerfile_cpu_stage())
    assert env_home and env_home.group(1) == home, "the same BENTOML_HOME as the image"


def test_resources_fit_the_serving_config() -> None:
    settings = _serving()
    resources = _container()["resources"]
    cpus = settings.workers * settings.threads * settings.ort_threads()
    assert float(resources["requests"]["cpu"]) == cpus
    # BENCHMARKS.md: 221 MB idle RSS per worker with one INT8 variant, about 70 MB per more
    per_worker_mib = 221 + 70 * (len(settings.variants) - 1)
    limit_mib = int(resources["limits"]["memory"].removesuffix("Mi"))
    assert limit_mib >= 2 * settings.workers * per_worker_mib


def test_readme_commands_make_the_secrets_and_namespace_the_manifests_use() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running on Kubernetes", 1)[1].split("\n## ", 1)[0]
    namespace = _one("kustomization.yaml")["namespace"]
    assert f"kubectl create namespace {namespace}" in section
    made: dict[str, set[str]] = {}
    commands = re.sub(r"\\\n\s*", " ", section)  # continuation lines joined
    for line in commands.splitlines():
        secret = re.search(rf"kubectl -n {namespace} create secret generic (\S+)", line)
        if secret:
            made[secret.group(1)] = set(re.findall(r"--from-literal=([\w-]+)=", line))
    wanted: dict[str, set[str]] = {}
    for item in _env().values():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            wanted.setdefault(ref["name"], set()).add(ref["key"])
    assert made == wanted
    assert "resources: [../k8s]" in section and "kubectl apply -k deploy/k8s" in section


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed: the kustomize build is not checked (no server needed)"
        )
    return kubectl


def test_kustomize_build_is_valid_and_wires_the_generated_configmap() -> None:
    built = subprocess.run(
        [_kubectl(), "kustomize", str(K8S)], check=True, capture_output=True, text=True
    ).stdout
    objects = {doc["kind"]: doc for doc in yaml.safe_load_all(built) if doc}
    assert set(objects) == {
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    for doc in objects.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "tuneserve"
    configmap = objects["ConfigMap"]
    assert configmap["data"]["serving.toml"] == (K8S / "serving.toml").read_text()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] != "tuneserve-serving"


def test_readme_overlay_puts_the_image_in(tmp_path: Path) -> None:
    kubectl = _kubectl()
    readme = (REPO / "README.md").read_text()
    start = readme.index("mkdir -p deploy/k8s-local")
    script = readme[start : readme.index("\nKUSTOMIZATION\n", start) + len("\nKUSTOMIZATION\n")]
    shutil.copytree(K8S, tmp_path / "deploy" / "k8s")
    image = "registry.example.com:5000/team/tuneserve:1.2.3"
    subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={"IMAGE": image, "PATH": os.environ["PATH"]},
        check=True,
    )
    built = subprocess.run(
        [kubectl, "kustomize", "deploy/k8s-local"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    (deployment,) = [d for d in yaml.safe_load_all(built) if d and d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
