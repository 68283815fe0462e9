"""The deployment examples in deploy/ are consistent with the gateway: the Kubernetes ConfigMap
loads as a config, probes and grace periods match the drain, compose runs two gateways on one
PostgreSQL behind the TLS proxy."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_kubernetes_manifests(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text())}
    assert set(docs) == {"Secret", "ConfigMap", "Deployment", "Service"}
    data = docs["ConfigMap"]["data"]
    (tmp_path / "bots").mkdir()
    (tmp_path / "config.yaml").write_text(data["config.yaml"])
    for name, text in data.items():
        if name != "config.yaml":
            (tmp_path / "bots" / name).write_text(text)
    config = load_config(tmp_path / "config.yaml", env={})
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= config.server.drain_seconds
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret_keys = set(docs["Secret"]["stringData"])
    assert {"GATEWAY_DATABASE_URL", "ZHIPU_API_KEY", "TWILIO_AUTH_TOKEN", "GATEWAY_OPERATOR_TOKEN"} <= secret_keys
    assert docs["Secret"]["stringData"]["GATEWAY_DATABASE_URL"].startswith("postgresql://")
    # Recordings: in a bucket every replica reads, a local outbox on a volume until uploaded.
    assert config.recording.url.startswith("s3://") and {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secret_keys
    assert "AWS_REGION" in {e["name"] for e in container["env"]}
    outbox = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["outbox"]
    assert str(config.recording.dir).startswith(outbox + "/")
    assert any(v["name"] == "outbox" for v in pod["volumes"])


def test_compose_runs_two_gateways_on_one_postgresql_behind_tls():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    gateways = [s for name, s in services.items() if name.startswith("gateway-")]
    assert len(gateways) == 2 and "postgres" in services and "proxy" in services
    for g in gateways:
        assert g["environment"]["GATEWAY_DATABASE_URL"].startswith("postgresql://")
        assert g["environment"]["GATEWAY_PUBLIC_URL"].startswith("https://")
        assert int(g["stop_grace_period"].rstrip("s")) >= 300
        env = g["environment"]
        assert env["GATEWAY_RECORDING_URL"].startswith("s3://") and "AWS_SECRET_ACCESS_KEY" in env
        assert env["AWS_ENDPOINT_URL"].endswith("minio:9000}") and any(v.endswith(":/app/data") for v in g["volumes"])
    assert "minio" in services and "minio-bucket" in services
    caddy = (DEPLOY / "Caddyfile").read_text()
    assert "gateway-1:8080" in caddy and "gateway-2:8080" in caddy and "health_uri /readyz" in caddy
