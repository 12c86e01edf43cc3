"""deploy/kubernetes/: every manifest validated against the Kubernetes schemas (offline, with
kubernetes-validate), the fields a graceful, non-root, several-replica deployment relies on,
and the ConfigMap's configuration checked by `revproxy check` with the Secret's file names."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import KUBERNETES, REPO, RunningCommand, parse_dockerfile
from harness import dead_port, free_port, wait_for

from revproxy.demo.certs import ensure_dev_certs

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

CONFIG_MOUNT = "/etc/revproxy/config"
CERTS_MOUNT = "/etc/revproxy/certs"


def _manifests() -> dict[str, dict[str, Any]]:
    """Resources by kind, from the files the kustomization lists."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files, "kustomization must list every manifest"
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text()):
            assert doc["kind"] not in out, f"two {doc['kind']} resources"
            out[doc["kind"]] = doc
    return out


def _validator():  # type: ignore[no-untyped-def]
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


def test_manifests_match_the_kubernetes_schemas() -> None:
    kv = _validator()
    version = kv.latest_version()
    for kind, resource in _manifests().items():
        try:
            kv.validate(resource, version, strict=True)
        except kv.SchemaNotFoundError as exc:  # schemas ship with the package; be explicit
            pytest.skip(f"no offline schema for {kind}: {exc}")
        except kv.ValidationError as exc:
            pytest.fail(f"{kind}: {exc.message} at {list(exc.path)}")


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The schema check above is real: a wrong type and an unknown field are caught."""
    kv = _validator()
    broken = copy.deepcopy(_manifests()["Deployment"])
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)
    broken = copy.deepcopy(_manifests()["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def _pod() -> dict[str, Any]:
    return _manifests()["Deployment"]["spec"]["template"]["spec"]


def _container() -> dict[str, Any]:
    containers = _pod()["containers"]
    assert len(containers) == 1
    return containers[0]


def _config() -> dict[str, Any]:
    return tomllib.loads(_manifests()["ConfigMap"]["data"]["revproxy.toml"])


def test_several_replicas_spread_and_protected() -> None:
    m = _manifests()
    deployment = m["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = m[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), f"{kind} does not select the proxy pods"
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    hpa = m["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    requests = _container()["resources"]["requests"]
    assert "cpu" in requests, "a CPU utilization target needs a CPU request"


def test_service_keeps_client_addresses_and_hides_the_admin_port() -> None:
    service = _manifests()["Service"]["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"
    ports = {p["port"]: p["targetPort"] for p in service["ports"]}
    assert ports == {443: "https", 80: "http"}
    named = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    binds = {
        name: int(listener["bind"].rsplit(":", 1)[1])
        for name, listener in _config()["listeners"].items()
    }
    assert named["https"] == binds["https"] and named["http"] == binds["http"]


def test_probes_ask_the_admin_server() -> None:
    container = _container()
    admin_port = int(_config()["admin"]["bind"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == admin_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # The kubelet probes the pod address, so loopback would not do here.
    assert _config()["admin"]["bind"].startswith("0.0.0.0:")


def test_pods_run_non_root_with_a_read_only_root() -> None:
    pod, container = _pod(), _container()
    uid, _, gid = parse_dockerfile().expand(parse_dockerfile().final.one("USER")).partition(":")
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert context["fsGroup"] == int(gid), "the Secret's files must be readable by the group"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= limits.keys() and {"cpu", "memory"} <= requests.keys()


def test_config_and_certificates_are_mounted_read_only() -> None:
    pod, container = _pod(), _container()
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(m.get("readOnly") is True for m in mounts.values())
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == _manifests()["ConfigMap"]["metadata"]["name"]
    assert volumes["certs"]["secret"]["secretName"] == _manifests()["Secret"]["metadata"]["name"]
    assert volumes["certs"]["secret"]["defaultMode"] & 0o007 == 0, "keys not world-readable"
    assert mounts["config"]["mountPath"] == CONFIG_MOUNT
    assert mounts["certs"]["mountPath"] == CERTS_MOUNT
    assert container["args"] == ["run", "-c", f"{CONFIG_MOUNT}/revproxy.toml"]
    assert parse_dockerfile().exec_form("ENTRYPOINT") == ["revproxy"], "args follow ENTRYPOINT"


def test_termination_outlasts_prestop_and_shutdown_grace() -> None:
    pod, container = _pod(), _container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and command[1].isdigit()
    pre_stop = int(command[1])
    assert pre_stop >= 3, "endpoints need a few seconds to drop the pod"
    grace = _config()["global"]["shutdown_grace"]
    # preStop runs first, then SIGTERM; the main process waits shutdown_grace + 5 s.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace + 5


def test_configmap_config_passes_check_with_the_secret_files(tmp_path: Path) -> None:
    """Every file the configuration names is a key of the Secret, and with real
    certificates under those names `revproxy check` accepts the configuration."""
    secret_keys = set(_manifests()["Secret"]["stringData"])
    text = _manifests()["ConfigMap"]["data"]["revproxy.toml"]
    named = set(re.findall(re.escape(CERTS_MOUNT) + r"/([\w.-]+)", text))
    assert named == secret_keys
    certs = ensure_dev_certs(tmp_path / "dev")
    files = {
        "meet.pem": certs.meet,
        "meet.key": certs.meet_key,
        "mail.pem": certs.mail,
        "mail.key": certs.mail_key,
        "intermediate.pem": certs.public_intermediate,
        "internal-ca.pem": certs.internal_ca,
    }
    assert set(files) == secret_keys
    mounted = tmp_path / "certs"
    mounted.mkdir()
    for name, source in files.items():
        (mounted / name).write_bytes(source.read_bytes())
    config = tmp_path / "revproxy.toml"
    config.write_text(text.replace(CERTS_MOUNT, str(mounted)))
    result = subprocess.run(
        [sys.executable, "-m", "revproxy", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # The one expected warning: the admin server is on the pod address for the probes.
    # (The development certificates used here name demo.test hosts, not the ConfigMap's
    # contoso.com ones, so the certificate-coverage warnings are left out.)
    warnings = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("warning") and "is covered by no certificate" not in line
    ]
    assert len(warnings) == 1 and "admin" in warnings[0], result.stderr


def test_probes_answer_on_a_proxy_running_the_configmap(tmp_path: Path) -> None:
    """The ConfigMap's configuration, listeners and admin moved to loopback: /readyz and
    /healthz (the probes' paths) answer 200, and SIGTERM ends it with status 0."""
    if not any("/readyz" in p.read_text() for p in (REPO / "revproxy").rglob("*.py")):
        pytest.skip("this revproxy has no admin /readyz endpoint yet")
    certs = ensure_dev_certs(tmp_path / "dev")
    mounted = tmp_path / "certs"
    mounted.mkdir()
    sources = {
        "meet.pem": certs.meet,
        "meet.key": certs.meet_key,
        "mail.pem": certs.mail,
        "mail.key": certs.mail_key,
        "intermediate.pem": certs.public_intermediate,
        "internal-ca.pem": certs.internal_ca,
    }
    for name, source in sources.items():
        (mounted / name).write_bytes(source.read_bytes())
    admin_port = free_port()
    text = _manifests()["ConfigMap"]["data"]["revproxy.toml"].replace(CERTS_MOUNT, str(mounted))
    text = text.replace('"0.0.0.0:9000"', f'"127.0.0.1:{admin_port}"')
    text = re.sub(r'"0\.0\.0\.0:\d+"', '"127.0.0.1:0"', text)
    # The real servers' names resolve only at a site; nothing listens at dead_port().
    text = re.sub(r'"[\w.-]+\.contoso\.local:\d+"', lambda _: f'"127.0.0.1:{dead_port()}"', text)
    config = tmp_path / "revproxy.toml"
    config.write_text(text)
    proxy = RunningCommand(
        [sys.executable, "-m", "revproxy", "run", "-c", str(config)],
        tmp_path / "proxy.log",
        env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1"),
        cwd=tmp_path,
    )

    def status(path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    try:
        proxy.wait_for_log(r"revproxy started")
        wait_for(lambda: status("/readyz") == 200, 15, "/readyz to answer 200")
        assert status("/healthz") == 200
        assert proxy.stop() == 0, proxy.log()
    finally:
        proxy.stop()
