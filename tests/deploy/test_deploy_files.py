"""deploy/: the Dockerfile, compose stack, Grafana provisioning, Kubernetes manifests and systemd
unit are well formed and agree with each other and with the code: files they mount exist, the
compose Prometheus config passes promtool, ports/env/paths match across manifests, and every
PROFILER_* variable they use is one the profiler or its hooks really read. Fast, no network."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from profiler.cli.paths import DASHBOARDS_DIR

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "ml-profiler.service"
DOCKERFILE = DEPLOY / "Dockerfile"
HOME = "/var/lib/ml-profiler"
PORT = 9478
ENV_NAME = re.compile(r"\bPROFILER_[A-Z0-9_]+\b")
YAML_FILES = sorted(
    p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and "prometheus" not in p.parts
)


def load(path: Path) -> object:
    return yaml.safe_load(path.read_text())


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def compose() -> dict:
    return load(COMPOSE)


def env_map(container: dict) -> dict[str, str]:
    return {e["name"]: str(e.get("value")) for e in container.get("env", [])}


def daemonset() -> dict:
    (ds,) = docs(K8S / "daemonset.yaml")
    return ds


def profiler_container() -> dict:
    (c,) = [
        c for c in daemonset()["spec"]["template"]["spec"]["containers"] if c["name"] == "profiler"
    ]
    return c


# ---- every file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert docs(path), f"{path} is empty"


def test_expected_files_exist() -> None:
    for rel in (
        "Dockerfile",
        "README.md",
        "docker-compose.yml",
        "compose/prometheus.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/ml-profiler.yml",
        "kubernetes/daemonset.yaml",
        "kubernetes/service.yaml",
        "kubernetes/servicemonitor.yaml",
        "kubernetes/training-pod-example.yaml",
        "systemd/ml-profiler.service",
    ):
        assert (DEPLOY / rel).is_file(), rel


def known_env_vars() -> set[str]:
    """PROFILER_* names the code reads: string literals in profiler/ and hooks/."""
    names: set[str] = set()
    for root in (REPO / "profiler", REPO / "hooks"):
        for path in root.rglob("*.py"):
            names.update(re.findall(r"""["'](PROFILER_[A-Z0-9_]+)["']""", path.read_text()))
    return names


def test_known_env_vars_found() -> None:
    known = known_env_vars()
    # the config table, pricing overrides and the hooks' own variables
    assert {"PROFILER_HOME", "PROFILER_METRICS_HOST", "PROFILER_METRICS_PORT"} <= known
    assert {"PROFILER_GPU", "PROFILER_PRICING", "PROFILER_AUTOSTART", "PROFILER_RUN_ID"} <= known


def test_env_vars_used_in_deploy_are_real() -> None:
    known = known_env_vars()
    used: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "prometheus" not in path.relative_to(DEPLOY).parts[:1]:
            for name in ENV_NAME.findall(path.read_text()):
                used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert used, "no PROFILER_* variable found in deploy/"
    # variables the test suite reads (named in deploy/README.md's "what was checked")
    tests = "".join(path.read_text() for path in (REPO / "tests").glob("*.py"))
    known |= {name for name in used if f'"{name}"' in tests and name.endswith("PROMTOOL")}
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert not unknown, f"not read by profiler/ or hooks/: {unknown}"


# ---- Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> str:
    # join continuation lines
    return re.sub(r"\\\n", " ", DOCKERFILE.read_text())


def instructions(name: str) -> list[str]:
    return [
        line.split(None, 1)[1] if " " in line.strip() else ""
        for line in dockerfile().splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def test_dockerfile_installs_package_and_runs_daemon() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    runs = " ".join(instructions("RUN"))
    assert re.search(r"pip install \.(\s|$|&)", runs), "the package itself is installed"
    assert not re.search(r"torch|tensorflow", runs)
    # what `pip install .` reads is copied in
    copied = " ".join(instructions("COPY"))
    for need in ("pyproject.toml", "README.md", "profiler", "hooks"):
        assert need in copied
        assert (REPO / need).exists()
    (entry,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    assert yaml.safe_load(entry) + yaml.safe_load(cmd) == ["profiler", "daemon"]
    (user,) = instructions("USER")
    assert user.strip() not in ("root", "0")
    env = " ".join(instructions("ENV"))
    assert f"PROFILER_HOME={HOME}" in env
    assert "PROFILER_METRICS_HOST=0.0.0.0" in env
    assert instructions("EXPOSE") == [str(PORT)]
    (health,) = instructions("HEALTHCHECK")
    assert "urllib" in health and "/metrics" in health


def test_pyproject_has_profiler_entry_point() -> None:
    assert re.search(
        r'^profiler = "profiler\.cli\.main:entry"$', (REPO / "pyproject.toml").read_text(), re.M
    )


# ---- compose ------------------------------------------------------------------------------------


def test_compose_services() -> None:
    c = compose()
    assert set(c["services"]) == {"profiler", "prometheus", "grafana"}
    prof = c["services"]["profiler"]
    assert (COMPOSE.parent / prof["build"]["context"] / prof["build"]["dockerfile"]).resolve() == (
        DOCKERFILE.resolve()
    )
    assert prof["pid"] == "host"
    assert prof["environment"]["PROFILER_HOME"] == HOME
    assert prof["environment"]["PROFILER_METRICS_HOST"] == "0.0.0.0"
    assert int(prof["environment"]["PROFILER_METRICS_PORT"]) == PORT
    (dev,) = prof["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert any(v.split(":")[1] == HOME for v in prof["volumes"])
    assert any(p.endswith(f":{PORT}") for p in prof["ports"])
    assert "GF_SECURITY_ADMIN_PASSWORD" in c["services"]["grafana"]["environment"]
    assert any(p.endswith(":3000") for p in c["services"]["grafana"]["ports"])


def test_compose_mounts_exist_and_volumes_declared() -> None:
    c = compose()
    declared = set(c.get("volumes") or {})
    for name, svc in c["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def mounted(service: str) -> dict[str, Path]:
    """container path -> repo path, for the service's bind mounts"""
    out = {}
    for vol in compose()["services"][service].get("volumes", []):
        source, target = vol.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def test_compose_prometheus_config_and_rules() -> None:
    mounts = mounted("prometheus")
    cfg_path = mounts["/etc/prometheus/prometheus.yml"]
    assert cfg_path == (DEPLOY / "compose" / "prometheus.yml").resolve()
    cfg = load(cfg_path)
    ref = load(DEPLOY / "prometheus" / "prometheus.yml")
    assert cfg["rule_files"] == ref["rule_files"]
    for rule in cfg["rule_files"]:
        assert mounts[f"/etc/prometheus/{rule}"] == (DEPLOY / "prometheus" / rule).resolve()
    (job,) = cfg["scrape_configs"]
    (ref_job,) = ref["scrape_configs"]
    assert job["job_name"] == ref_job["job_name"]
    assert job["static_configs"][0]["targets"] == [f"profiler:{PORT}"]


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("PROFILER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool not found: install Debian's prometheus package")
        pytest.skip("promtool not installed")
    # lay the files out as the container sees them
    for target, source in mounted("prometheus").items():
        if target.startswith("/etc/prometheus/"):
            shutil.copy(source, tmp_path / Path(target).name)
    out = subprocess.run(
        [tool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_provisioning() -> None:
    mounts = mounted("grafana")
    prov = mounts["/etc/grafana/provisioning"]
    (ds,) = load(prov / "datasources" / "prometheus.yml")["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus" and ds["isDefault"]
    assert ds["url"] == "http://prometheus:9090"
    (provider,) = load(prov / "dashboards" / "ml-profiler.yml")["providers"]
    assert provider["type"] == "file"
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == (REPO / "profiler" / "dashboards").resolve()
    # the folder Grafana provisions is the one `profiler dashboards push` pushes by default
    assert dashboards == DASHBOARDS_DIR.resolve()
    assert list(dashboards.glob("*.json"))


# ---- Kubernetes ---------------------------------------------------------------------------------


def test_k8s_manifests_have_identity() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), path


def test_kustomization_lists_manifests_but_not_example() -> None:
    (k,) = docs(K8S / "kustomization.yaml")
    for res in k["resources"]:
        assert (K8S / res).is_file(), res
    assert "training-pod-example.yaml" not in k["resources"]


def test_daemonset_agrees_with_service_and_servicemonitor() -> None:
    ds = daemonset()
    assert ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pod["hostPID"] is True
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nvidia.com/gpu.present" in pod["nodeSelector"]
    c = profiler_container()
    (port,) = c["ports"]
    assert port == {"name": "metrics", "containerPort": PORT, "protocol": "TCP"}
    env = env_map(c)
    assert env["PROFILER_HOME"] == HOME
    assert env["PROFILER_METRICS_HOST"] == "0.0.0.0"
    assert int(env["PROFILER_METRICS_PORT"]) == PORT
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"], "must not take GPUs from training"
    volumes = {v["name"]: v for v in pod["volumes"]}
    (home,) = [m for m in c["volumeMounts"] if m["mountPath"] == HOME]
    assert volumes[home["name"]]["hostPath"]["path"] == HOME

    (svc,) = docs(K8S / "service.yaml")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    (sport,) = svc["spec"]["ports"]
    assert sport["name"] == "metrics" and sport["port"] == PORT
    assert sport["targetPort"] in ("metrics", PORT)
    assert svc["metadata"]["namespace"] == ds["metadata"]["namespace"]

    (sm,) = docs(K8S / "servicemonitor.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["interval"] == "5s"


def test_uid_agrees_between_image_and_manifests() -> None:
    m = re.search(r"ARG APP_UID=(\d+)", DOCKERFILE.read_text())
    assert m
    uid = int(m.group(1))
    assert profiler_container()["securityContext"]["runAsUser"] == uid
    (pod,) = docs(K8S / "training-pod-example.yaml")
    assert pod["spec"]["securityContext"]["runAsUser"] == uid
    assert f"--user {uid}" in COMPOSE.read_text()


def test_training_pod_example_shares_the_socket() -> None:
    (pod,) = docs(K8S / "training-pod-example.yaml")
    spec = pod["spec"]
    assert spec["hostPID"] is True
    (c,) = spec["containers"]
    env = env_map(c)
    assert env["PROFILER_HOME"] == HOME and env["PROFILER_AUTOSTART"] == "0"
    volumes = {v["name"]: v for v in spec["volumes"]}
    (home,) = [m for m in c["volumeMounts"] if m["mountPath"] == HOME]
    assert volumes[home["name"]]["hostPath"]["path"] == HOME


# ---- systemd ------------------------------------------------------------------------------------


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    assert svc["ExecStart"].split()[0].endswith("/profiler")
    assert svc["ExecStart"].split()[1:] == ["daemon"]
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["Restart"] == "on-failure"
    assert svc["StateDirectory"] == "ml-profiler"
    assert HOME == "/var/lib/" + svc["StateDirectory"]
    # Environment= may repeat; configparser keeps the last, so read them from the text
    envs = re.findall(r"^Environment=(\S+)", UNIT.read_text(), re.M)
    assert f"PROFILER_HOME={HOME}" in envs
    assert "PrivateDevices" not in svc and "DevicePolicy" not in svc, "NVML needs /dev/nvidia*"
    assert unit["Install"]["WantedBy"]
