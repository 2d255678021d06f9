#!/usr/bin/env python3
"""Validates the deployment files that cannot run on the CI machine (no Docker, no Kubernetes):
they parse, and they say what raftlog needs (3 nodes with distinct ids and volumes, the static
member list, readiness on /readyz, a non-root user, SIGTERM with a grace period).

Usage: check_deploy_files.py REPO_ROOT      (exit 0 when every check passes)
"""
import configparser
import re
import sys
from pathlib import Path

import yaml


def check_dockerfile(root):
    text = (root / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(stages) >= 2, "Dockerfile must be multi-stage"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the runtime stage must not run as root"
    assert re.search(r"^VOLUME\s+.*?/var/lib/raftlog", text, re.M), "data must be in a volume"
    assert "RAFTLOG_DATA_DIR=/var/lib/raftlog" in text
    assert re.search(r"^STOPSIGNAL\s+SIGTERM", text, re.M)
    assert re.search(r"^ENTRYPOINT\s+\[\"/usr/local/bin/raftlog-node\"\]", text, re.M)
    assert (root / ".dockerignore").read_text().splitlines()[0] == "target"
    # Every crate that ships a binary is built, and the binaries shipped are the stripped ones.
    for package in ("raftlog-node", "raftlog-cli"):
        assert f"-p {package}" in text, f"the image must build {package}"
    assert "scripts/dist.sh" in text, "the image ships the binaries scripts/dist.sh strips"


def check_compose(root):
    compose = yaml.safe_load((root / "deploy/docker-compose.yml").read_text())
    services = compose["services"]
    assert len(services) == 3, "three nodes"
    ids, members, volumes, ports = set(), set(), set(), set()
    for name, svc in services.items():
        env = svc["environment"]
        ids.add(env["RAFTLOG_NODE_ID"])
        members.add(env["RAFTLOG_INITIAL_CLUSTER"])
        assert env["RAFTLOG_ADVERTISE_ADDR"] == f"{name}:8051", name
        assert f"{env['RAFTLOG_NODE_ID']}={name}:8051" in env["RAFTLOG_INITIAL_CLUSTER"], name
        assert svc["image"] and svc["build"]["context"] == "..", name
        assert svc["stop_grace_period"] == "30s", name
        (volume,) = svc["volumes"]
        assert volume.endswith(":/var/lib/raftlog"), name
        volumes.add(volume.split(":")[0])
        ports.update(p.split(":")[0] for p in svc["ports"])
    assert ids == {"1", "2", "3"}, ids
    assert len(members) == 1, "every node must get the same member list"
    assert volumes <= set(compose["volumes"]) and len(volumes) == 3, "one volume per node"
    assert len(ports) == 6, "host ports must not collide"


def check_kubernetes(root):
    docs = [d for d in yaml.safe_load_all((root / "deploy/kubernetes/raftlog.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Service", "StatefulSet"} and len(docs) == 3, [d["kind"] for d in docs]
    sts = kinds["StatefulSet"]
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert headless and headless[0]["metadata"]["name"] == sts["spec"]["serviceName"]
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    script = container["args"][0]
    for pod_index in range(3):
        assert f"raftlog-{pod_index}.raftlog." in script, "member list names every pod"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert mounts.get("data") == "/var/lib/raftlog" and "data" in claims
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def check_systemd(root):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(root / "deploy/systemd/raftlog-node.service")
    service = unit["Service"]
    assert service["ExecStart"].startswith("/usr/local/bin/raftlog-node")
    assert service["User"] == "raftlog"
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 10
    assert "/var/lib/raftlog" in service["ReadWritePaths"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def main(root):
    root = Path(root)
    for check in (check_dockerfile, check_compose, check_kubernetes, check_systemd):
        check(root)
        print(f"ok: {check.__name__}")


if __name__ == "__main__":
    main(sys.argv[1])
