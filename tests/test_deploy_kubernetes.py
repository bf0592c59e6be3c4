"""The Kubernetes templates under deploy/kubernetes render and are valid objects.

Each template is filled in as ``envsubst`` would and checked offline against the
Kubernetes JSON schema (``kubernetes-validate`` ships it; strict: an unknown or
misspelt field is an error), so a template a user applies is one the API server
accepts. The cross-checks pin what the schema cannot: the worker runs the
worker command with its concurrency, and every secret a pod reads exists in the
example Secret under that key.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import kubernetes_validate  # the `test` extra: the schemas, offline
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
K8S_VERSION = "1.30"
VALUES = {
    "NAMESPACE": "agents",
    "IMAGE": "registry.example.org/team/agent-worker:1",
    "REPLICAS": "3",
    "CONCURRENCY": "2",
    "RUN": "report-2027-01-05",
    "NOTEBOOK": "report.ipynb",
}


def render(name: str, values: dict[str, str] = VALUES) -> list[dict[str, Any]]:
    """The objects of template ``name`` filled with ``values``; a name left unfilled is a KeyError."""
    text = (DEPLOY / name).read_text()
    # Only the YAML, not the comments, is substituted: the comments show ${...} usage.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    docs = [d for d in yaml.safe_load_all(string.Template(body).substitute(values)) if d]
    assert docs, name
    return docs


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


TEMPLATES = sorted(p.name for p in DEPLOY.glob("*.yaml"))


def test_templates_exist() -> None:
    assert {"worker-deployment.yaml", "job.yaml", "secret.example.yaml"} <= set(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_renders_to_valid_kubernetes_objects(name: str) -> None:
    for doc in render(name):
        validate(doc)
        assert doc["metadata"]["namespace"] == "agents"
        assert "${" not in yaml.safe_dump(doc)


def test_the_validator_refuses_a_broken_object() -> None:
    """The check can fail: a misspelt field and a string count are both refused."""
    (doc,) = render("worker-deployment.yaml")
    doc["spec"]["replica"] = doc["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)
    (doc,) = render("worker-deployment.yaml", {**VALUES, "REPLICAS": "two"})
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc)


def _secret_refs(pod_spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Environment variable -> (secret, key) for every secretKeyRef in the pod's containers."""
    refs = {}
    for container in pod_spec["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs[env["name"]] = (ref["name"], ref["key"])
    return refs


def test_worker_runs_the_worker_command_with_the_store_and_key_from_the_secret() -> None:
    (deployment,) = render("worker-deployment.yaml")
    (secret,) = render("secret.example.yaml")
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["jupyter", "agent", "worker", "--concurrency", "2"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    refs = _secret_refs(pod)
    assert set(refs) == {"JUPYTER_AGENT_STORE", "OPENAI_API_KEY"}
    for secret_name, key in refs.values():
        assert secret_name == secret["metadata"]["name"]
        assert key in secret["stringData"]
    assert all(e["name"] not in refs or "value" not in e for e in container["env"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/notebooks"]["readOnly"] is True


def test_job_resumes_one_notebook_with_the_same_secrets() -> None:
    (job,) = render("job.yaml")
    (secret,) = render("secret.example.yaml")
    assert job["kind"] == "Job" and job["metadata"]["name"] == "jupyter-agent-report-2027-01-05"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["jupyter", "agent", "resume", "/notebooks/report.ipynb"]
    refs = _secret_refs(pod)
    assert set(refs) == {"JUPYTER_AGENT_STORE", "OPENAI_API_KEY"}
    assert {k for _, k in refs.values()} <= set(secret["stringData"])


def test_every_variable_a_template_uses_is_documented_in_its_header() -> None:
    """The header's `export` line names every ${VAR} the YAML needs, so envsubst fills them all."""
    for name in ("worker-deployment.yaml", "job.yaml"):
        text = (DEPLOY / name).read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        used = set(re.findall(r"\$\{(\w+)\}", body))
        assert used and all(f"{v}=" in header for v in used), (name, used)
