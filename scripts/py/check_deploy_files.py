#!/usr/bin/env python3
"""Validates the deployment files, which cannot run on the CI machine as they are (no Docker,
no Kubernetes): they parse, they say what raftlog needs (3 nodes with distinct ids and volumes,
the static member list, readiness on /readyz, a non-root user, SIGTERM with a grace period), and
they run secured (TLS, auth, each node given its own key). Then the compose file's cluster runs
as far as it can here: deploy/make-pki.sh with the pki service's arguments, and three node
processes with each node service's environment and secrets (only ports and the data dir moved,
as one host has no containers); a client with the CA and the bootstrap token creates a topic,
one without the token or without TLS is refused.

Usage: check_deploy_files.py REPO_ROOT NODE_BIN CLI_BIN     (exit 0 when every check passes)
"""
import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def node_services(compose):
    return {name: svc for name, svc in compose["services"].items() if name != "pki"}


def check_compose(root):
    compose = yaml.safe_load((root / "deploy/docker-compose.yml").read_text())
    services = node_services(compose)
    assert len(services) == 3, "three nodes"
    pki = compose["services"]["pki"]
    assert "make-pki.sh" in " ".join(pki["entrypoint"]), "the pki service runs deploy/make-pki.sh"
    ids, members, volumes, ports = set(), set(), set(), set()
    for name, svc in services.items():
        env = svc["environment"]
        ids.add(env["RAFTLOG_NODE_ID"])
        members.add(env["RAFTLOG_INITIAL_CLUSTER"])
        assert env["RAFTLOG_ADVERTISE_ADDR"] == f"{name}:8051", name
        assert f"{env['RAFTLOG_NODE_ID']}={name}:8051" in env["RAFTLOG_INITIAL_CLUSTER"], name
        assert svc["image"] and svc["build"]["context"] == "..", name
        assert svc["stop_grace_period"] == "30s", name
        assert svc["depends_on"]["pki"]["condition"] == "service_completed_successfully", name
        (volume,) = svc["volumes"]
        assert volume.endswith(":/var/lib/raftlog"), name
        volumes.add(volume.split(":")[0])
        ports.update(p.split(":")[0] for p in svc["ports"])
        # Secured: TLS and auth on, and the node's own key only.
        assert env["RAFTLOG_AUTH_ENABLED"] == "true", name
        for key in ("RAFTLOG_TLS_CA", "RAFTLOG_TLS_CERT", "RAFTLOG_TLS_KEY"):
            assert env[key].startswith("/run/secrets/"), (name, key)
        keys = [compose["secrets"][s["source"]]["file"] for s in svc["secrets"] if isinstance(s, dict)]
        n = env["RAFTLOG_NODE_ID"]
        assert f"./pki/node-{n}-key.pem" in keys, (name, keys)
        assert not any("key" in k and f"node-{n}-" not in k for k in keys), (name, keys)
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
    # Secured: the certificates from the Secret, TLS and auth on.
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets.get("pki") == "raftlog-pki" and mounts.get("pki") == "/etc/raftlog/pki"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAFTLOG_AUTH_ENABLED"] == "true" and env["RAFTLOG_TLS_CA"].startswith("/etc/raftlog/pki/")
    assert "RAFTLOG_TLS_CERT=/etc/raftlog/pki/node-${RAFTLOG_NODE_ID}.pem" in script
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
    config = (root / "deploy/systemd/raftlog-node.toml").read_text()
    for line in ("auth_enabled = true", 'tls_ca = "/etc/raftlog/pki/ca.pem"',
                 'tls_key = "/etc/raftlog/pki/node-1-key.pem"'):
        assert line in config, line


def run_compose_cluster(root, node_bin, cli_bin):
    """The compose file's three nodes as processes on this host, secured as the file says."""
    compose = yaml.safe_load((root / "deploy/docker-compose.yml").read_text())
    entry = compose["services"]["pki"]["entrypoint"]
    pki_args = entry[entry.index("/pki") + 1:]
    work = Path(tempfile.mkdtemp(prefix="raftlog-deploy-check."))
    procs = []
    try:
        pki = work / "pki"
        env = dict(os.environ, RAFTLOG_CLI=str(cli_bin))
        subprocess.run(["sh", str(root / "deploy/make-pki.sh"), str(pki), *pki_args],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        services = node_services(compose)
        port = {name: (8070 + i, 9070 + i) for i, name in enumerate(sorted(services), start=1)}
        for name, svc in services.items():
            secrets = work / f"secrets-{name}"
            secrets.mkdir()
            for s in svc["secrets"]:
                source, target = (s, s) if isinstance(s, str) else (s["source"], s["target"])
                shutil.copy(compose["secrets"][source]["file"].replace("./pki", str(pki)),
                            secrets / target)
            env = dict(os.environ)
            for key, value in svc["environment"].items():
                value = str(value).replace("/run/secrets", str(secrets))
                for other, (grpc, _) in port.items():
                    value = value.replace(f"{other}:8051", f"127.0.0.1:{grpc}")
                env[key] = value
            grpc, admin = port[name]
            env.update(RAFTLOG_LISTEN_ADDR=f"127.0.0.1:{grpc}", RAFTLOG_ADMIN_ADDR=f"127.0.0.1:{admin}",
                       RAFTLOG_DATA_DIR=str(work / f"data-{name}"), RAFTLOG_LOG_FORMAT="json")
            log = open(work / f"{name}.log", "w")
            procs.append(subprocess.Popen([str(node_bin)], env=env, stdout=log, stderr=log))
        deadline = time.time() + 60
        for grpc, admin in port.values():
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2)
                    break
                except OSError:
                    assert time.time() < deadline, f"node on {grpc} not ready; logs in {work}"
                    time.sleep(0.2)
        endpoints = ",".join(f"127.0.0.1:{grpc}" for grpc, _ in port.values())
        token = (pki / "bootstrap.token").read_text().strip()

        def cli(*args, **extra):
            env = dict(os.environ, RAFTLOG_ENDPOINTS=endpoints, **extra)
            return subprocess.run([str(cli_bin), *args], env=env, capture_output=True, text=True)

        made = cli("topic", "create", "deploy-check", RAFTLOG_TLS_CA=str(pki / "ca.pem"), RAFTLOG_TOKEN=token)
        assert made.returncode == 0, made.stderr
        anonymous = cli("topic", "list", RAFTLOG_TLS_CA=str(pki / "ca.pem"))
        assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr, anonymous.stderr
        plaintext = cli("topic", "list", RAFTLOG_TOKEN=token)
        assert plaintext.returncode != 0, plaintext.stdout
    finally:
        for p in procs:
            p.kill()
            p.wait()
    shutil.rmtree(work, ignore_errors=True)


def main(root, node_bin, cli_bin):
    root = Path(root)
    for check in (check_dockerfile, check_compose, check_kubernetes, check_systemd):
        check(root)
        print(f"ok: {check.__name__}")
    run_compose_cluster(root, node_bin, cli_bin)
    print("ok: run_compose_cluster")


if __name__ == "__main__":
    main(*sys.argv[1:4])
