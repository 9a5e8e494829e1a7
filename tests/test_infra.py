"""Static checks of the deployment files under infra/ (fast, no network, no Docker, no cluster).

- every YAML parses (multi-document aware);
- the Ray cluster launcher configs validate against the JSON schema shipped in the ray package and
  pass Ray's own config preparation;
- the Kubernetes manifests validate against the schemas bundled in `kubernetes-validate` (skipped
  when it is not installed); RayCluster / RayJob, whose CRD schemas are not bundled, are checked
  field by field, and their pod templates are validated as core PodTemplates;
- no YAML holds a literal secret value;
- the RayJob entrypoint is `bash infra/entrypoint.sh ...`, which passes `bash -n` and runs exactly
  `python experiments/cv_search.py --address ... --cohort ... --storage ... --mlflow-uri ...
  --experiment ... ARGS`;
- the Dockerfile pins the Ray image to the Ray version of pyproject.toml and installs the project.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
ENTRYPOINT = INFRA / "entrypoint.sh"
LAUNCHER_CONFIGS = [INFRA / "ray" / "aws.yaml", INFRA / "ray" / "gcp.yaml"]
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "docker" / "Dockerfile"

# Options of experiments/cv_search.py: read from its argument parser when the script is there,
# else the options the engine's command line is specified to have.
_CV_SEARCH = ROOT / "experiments" / "cv_search.py"
CV_SEARCH_OPTIONS = (
    set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)[\"']", _CV_SEARCH.read_text()))
    if _CV_SEARCH.is_file()
    else {
        "--subset", "--subsets", "--cohort", "--space", "--trials", "--folds", "--pretrain-epochs",
        "--epochs", "--address", "--gpus-per-trial", "--cpus-per-trial", "--workers", "--storage",
        "--mlflow-uri", "--experiment", "--resume", "--seed",
    }
)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(package: str) -> str:
    """The exact version pinned in pyproject.toml for `package` (e.g. ray[train,tune]==2.60.0)."""
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


RAY_VERSION = _pin("ray")


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _k8s_docs() if d.get("kind") == kind]


def _cluster_specs() -> list[tuple[str, dict]]:
    """(label, RayClusterSpec) of every RayCluster and of every RayJob with an inline cluster."""
    specs = [(f"{p.name}:RayCluster/{d['metadata']['name']}", d["spec"]) for p, d in _by_kind("RayCluster")]
    specs += [
        (f"{p.name}:RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"])
        for p, d in _by_kind("RayJob")
        if "rayClusterSpec" in d["spec"]
    ]
    return specs


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def _assert_pinned(image: str, where: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{where}: image {image!r} has no tag"
    assert tag != "latest" and not tag.startswith("latest"), f"{where}: image {image!r} uses latest"


# ----------------------------------------------------------------------------------------------
# Parsing


def test_every_yaml_under_infra_parses():
    files = _yaml_files()
    assert len(files) >= 8, files
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} holds no YAML document"
        for d in docs:
            assert isinstance(d, dict), f"{path}: a document is a {type(d).__name__}, not a mapping"


# ----------------------------------------------------------------------------------------------
# Ray cluster launcher


def _ray_schema() -> dict:
    import importlib.util

    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations, "ray is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"no cluster config schema at {path}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_ray_schema(path):
    import jsonschema

    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, _ray_schema())

    # Ray's own checks and default filling (what `ray up` runs first); offline.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(config)
    validate_config(prepare_config(config))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_shape(path):
    c = yaml.safe_load(path.read_text())
    types = c["available_node_types"]
    head = c["head_node_type"]
    assert head in types
    assert types[head]["resources"].get("GPU", 0) == 0, "the head must be a CPU node"
    workers = {k: v for k, v in types.items() if k != head}
    gpu_workers = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    assert len(gpu_workers) >= 2, "expected a 1-GPU and a multi-GPU worker type"
    assert any(v["resources"]["GPU"] == 1 for v in gpu_workers.values())
    assert any(v["resources"]["GPU"] >= 8 for v in gpu_workers.values())
    for name, t in workers.items():
        assert t.get("min_workers") == 0, f"{name}: min_workers must be 0 (scale from zero)"
        assert t.get("max_workers", 0) > 0, f"{name}: max_workers must be > 0"
    assert 0 < c["idle_timeout_minutes"] <= 30
    docker = c["docker"]
    _assert_pinned(docker["image"], f"{path.name} docker.image")
    assert f"ray{RAY_VERSION}" in docker["image"], "image tag must name the pinned Ray version"
    assert "-e RAY_AUTH_MODE=token" in docker["run_options"], "Ray token auth must be on"
    mounts = c["file_mounts"]
    assert "~/.ray/auth_token" in mounts and "~/.mlflow/credentials" in mounts
    # The dashboard is reached through `ray dashboard` (SSH tunnel), never via a public rule.
    assert "8265" not in json.dumps(c.get("provider", {}).get("security_group", {}))


# ----------------------------------------------------------------------------------------------
# Kubernetes


def test_k8s_manifests_have_the_expected_kinds():
    kinds = {d["kind"] for _, d in _k8s_docs()}
    for kind in ("RayCluster", "RayJob", "Deployment", "Service", "StatefulSet", "Secret", "ConfigMap"):
        assert kind in kinds, f"no {kind} under infra/k8s"


def test_k8s_core_manifests_validate_against_bundled_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version()
    checked = 0
    for path, doc in _k8s_docs():
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        kv.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 8
    # The pod templates inside RayCluster / RayJob are core PodTemplateSpecs.
    for label, spec in _cluster_specs():
        for group, template in _pod_templates(spec):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": f"{group}-template"}, "template": template}
            try:
                kv.validate(wrapped, version, strict=True)
            except kv.ValidationError as e:  # pragma: no cover - the message is the point
                raise AssertionError(f"{label} {group}: {e}") from None


def test_kubernetes_validate_catches_a_typo():
    """The strict validation used above really rejects unknown fields."""
    kv = pytest.importorskip("kubernetes_validate")
    deployment = next(d for _, d in _by_kind("Deployment"))
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_kuberay_cluster_specs():
    specs = _cluster_specs()
    assert len(specs) >= 2, "expected a RayCluster and a RayJob with an inline cluster"
    for path, doc in _by_kind("RayCluster") + _by_kind("RayJob"):
        assert doc["apiVersion"] == "ray.io/v1", f"{path.name}: apiVersion"
        assert doc["metadata"].get("name"), f"{path.name}: metadata.name"
    for label, spec in specs:
        assert spec["rayVersion"] == RAY_VERSION, f"{label}: rayVersion != pyproject's Ray"
        assert spec["enableInTreeAutoscaling"] is True, f"{label}: autoscaling off"
        assert spec.get("authOptions", {}).get("mode") == "token", f"{label}: Ray token auth off"
        head = spec["headGroupSpec"]
        assert isinstance(head["rayStartParams"], dict), f"{label}: headGroupSpec.rayStartParams"
        assert all(isinstance(v, str) for v in head["rayStartParams"].values()), f"{label}: rayStartParams values must be strings"
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{label}: head service must not be exposed"
        groups = spec["workerGroupSpecs"]
        assert groups, f"{label}: no worker group"
        gpu_groups = 0
        for g in groups:
            where = f"{label} group {g['groupName']}"
            assert g["minReplicas"] == 0, f"{where}: minReplicas must be 0"
            assert g["maxReplicas"] > 0, f"{where}: maxReplicas must be > 0"
            assert 0 <= g.get("replicas", 0) <= g["maxReplicas"], where
            assert isinstance(g["rayStartParams"], dict), f"{where}: rayStartParams"
            for c in g["template"]["spec"]["containers"]:
                res = c["resources"]
                if "nvidia.com/gpu" in res.get("limits", {}):
                    gpu_groups += 1
                    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"], where
                assert res.get("requests") and res.get("limits"), f"{where}: requests and limits"
        assert gpu_groups >= 1, f"{label}: no GPU worker group (nvidia.com/gpu)"
        for group, template in _pod_templates(spec):
            for c in template["spec"]["containers"]:
                _assert_pinned(c["image"], f"{label} {group}")
                assert f"ray{RAY_VERSION}" in c["image"], f"{label} {group}: image tag must name Ray {RAY_VERSION}"
        head_limits = head["template"]["spec"]["containers"][0]["resources"].get("limits", {})
        assert "nvidia.com/gpu" not in head_limits, f"{label}: the head is a CPU pod"


def test_rayjob_runs_the_cluster_entrypoint():
    jobs = _by_kind("RayJob")
    assert len(jobs) == 1
    _, job = jobs[0]
    spec = job["spec"]
    entrypoint = spec["entrypoint"]
    assert entrypoint.startswith("bash infra/entrypoint.sh"), entrypoint
    args = shlex.split(entrypoint)[2:]
    unknown = [a for a in args if a.startswith("--") and a not in CV_SEARCH_OPTIONS]
    assert not unknown, f"options cv_search.py does not have: {unknown}"
    # The entrypoint supplies these from the environment; the RayJob must not repeat them.
    for fixed in ("--cohort", "--storage", "--mlflow-uri", "--address", "--experiment"):
        assert fixed not in args
        assert fixed in CV_SEARCH_OPTIONS, f"cv_search.py has no {fixed}, which infra/entrypoint.sh passes"
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec / clusterSelector"
    if "rayClusterSpec" in spec:
        assert spec["shutdownAfterJobFinishes"] is True, "an inline cluster must go away with its job"
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    assert runtime_env.get("working_dir") == "/home/ray/impumae", "the job must run in the image's project dir"


def test_search_space_named_by_the_rayjob_exists():
    _, job = _by_kind("RayJob")[0]
    args = shlex.split(job["spec"]["entrypoint"])
    if "--space" not in args:
        return
    space = ROOT / args[args.index("--space") + 1]
    if not any((ROOT / "search_spaces").glob("*.yaml")):
        pytest.skip("search_spaces/ has no search space yet")
    assert space.is_file(), f"the RayJob names {space.relative_to(ROOT)}, which does not exist"


def test_mlflow_server_deployment():
    (path, dep), = _by_kind("Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "mlflow server" in script and "--app-name basic-auth" in script
    assert "--artifacts-destination" in script and "--backend-store-uri" in script
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    for name in ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                 "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], f"{name} must come from a Secret"
    _assert_pinned(container["image"], "mlflow")
    services = {d["metadata"]["name"]: d for _, d in _by_kind("Service")}
    for name, svc in services.items():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service {name} is exposed"
    assert _by_kind("Ingress") == [], "no Ingress in the base manifests"
    (_, pg), = _by_kind("StatefulSet")
    pg_env = {e["name"]: e for e in pg["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in pg_env["POSTGRES_PASSWORD"]["valueFrom"]
    for _, d in _k8s_docs():
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            _assert_pinned(c["image"], f"{d['kind']}/{d['metadata']['name']}")


# ----------------------------------------------------------------------------------------------
# Secrets

SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential", re.I)
PLACEHOLDER = re.compile(r"^(|REPLACE_[A-Z0-9_]*|<[^<>]+>|\$\{[A-Za-z0-9_]+\}|\$\([A-Za-z0-9_]+\)|\$[A-Za-z_][A-Za-z0-9_]*)$")
PATH_LIKE = re.compile(r"^~?/[\w./-]*$")
ASSIGNMENT = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
URI_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s/]+)@", re.I)
TEXT_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
}


def _secret_literals(node, where: str = "") -> list[str]:
    """Literal secret values in a parsed YAML document (placeholders and references are fine)."""
    found: list[str] = []

    def literal(value) -> bool:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool) and not (
            isinstance(value, str) and (PLACEHOLDER.match(value.strip()) or PATH_LIKE.match(value.strip()))
        )

    def check_string(s: str, at: str) -> None:
        for name, value in ASSIGNMENT.findall(s):
            if SECRET_KEY.search(name) and literal(value.strip("'\"")):
                found.append(f"{at}: {name}=<literal>")
        for password in URI_USERINFO.findall(s):
            if literal(password):
                found.append(f"{at}: credentials inside a URI")

    def walk(n, at: str) -> None:
        if isinstance(n, dict):
            if n.get("kind") == "Secret" and n.get("apiVersion") == "v1":
                for field in ("data", "stringData"):
                    for k, v in (n.get(field) or {}).items():
                        if literal(v):
                            found.append(f"{at}/{field}/{k}: Secret value is not a placeholder")
            # A container env entry: {name: X_PASSWORD, value: literal}.
            if isinstance(n.get("name"), str) and "value" in n and SECRET_KEY.search(n["name"]):
                if literal(n["value"]):
                    found.append(f"{at}: env {n['name']} has a literal value")
            for k, v in n.items():
                key = str(k)
                if SECRET_KEY.search(key) and literal(v) and key not in {"name"}:
                    found.append(f"{at}/{key}: literal value")
                walk(v, f"{at}/{key}")
        elif isinstance(n, list):
            for i, v in enumerate(n):
                walk(v, f"{at}[{i}]")
        elif isinstance(n, str):
            check_string(n, at)

    walk(node, where)
    return found


def test_secret_scanner_finds_planted_secrets():
    planted = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "stringData": {"password": "hunter2", "token": "REPLACE_WITH_TOKEN"},
        "spec": {"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"},
                         {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "x", "key": "password"}}}],
                 "run_options": ["-e AWS_SECRET_ACCESS_KEY=abc123", "-e RAY_AUTH_MODE=token"],
                 "uri": "postgresql://mlflow:hunter2@db:5432/mlflow",
                 "ok_uri": "postgresql://mlflow:$(POSTGRES_PASSWORD)@db:5432/mlflow",
                 "auth": {"admin_password": "letmein"},
                 "file_mounts": {"~/.ray/auth_token": "~/.ray/auth_token"}},
    }
    found = {f.split(": ")[0] for f in _secret_literals(planted)}
    assert found == {"/stringData/password", "/spec/env[0]", "/spec/run_options[0]", "/spec/uri",
                     "/spec/auth/admin_password"}, found


def test_no_secret_literals_in_any_yaml():
    problems = []
    for path in _yaml_files():
        for i, doc in enumerate(_docs(path)):
            problems += _secret_literals(doc, f"{path.relative_to(ROOT)}#{i}")
    assert not problems, "\n".join(problems)


def test_no_credentials_in_infra_text():
    files = [p for p in INFRA.rglob("*") if p.is_file()] + [ROOT / "docs" / "scaling.md"]
    problems = []
    for path in files:
        text = path.read_text(errors="replace")
        for what, pattern in TEXT_PATTERNS.items():
            if pattern.search(text):
                problems.append(f"{path.relative_to(ROOT)}: {what}")
    assert not problems, problems


def test_secret_template_holds_placeholders_only():
    docs = _docs(K8S / "secrets.template.yaml")
    assert docs and all(d["kind"] == "Secret" for d in docs)
    for d in docs:
        for k, v in d.get("stringData", {}).items():
            assert re.fullmatch(r"REPLACE_[A-Z0-9_]+", v), f"{d['metadata']['name']}/{k}"


# ----------------------------------------------------------------------------------------------
# The entrypoint and the submit helper


def _fake_python(tmp_path: Path) -> Path:
    fake = tmp_path / "fake-python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("script", ["infra/entrypoint.sh", "infra/ray/submit.sh"])
def test_scripts_pass_bash_n(script):
    path = ROOT / script
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_entrypoint_runs_cv_search_with_env_settings(tmp_path):
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "IMPUMAE_COHORT": "s3://bucket/cohort.zarr", "IMPUMAE_STORAGE": "s3://bucket/runs",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "IMPUMAE_PYTHON": str(_fake_python(tmp_path)),
    }
    out = subprocess.run(["bash", str(ENTRYPOINT), "--subsets", "rna,dna", "rna,dna,mri", "--trials", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == str(ROOT), "the entrypoint runs from the project root"
    assert lines[1:] == [
        "experiments/cv_search.py", "--address", "auto", "--cohort", "s3://bucket/cohort.zarr",
        "--storage", "s3://bucket/runs", "--mlflow-uri", "http://mlflow:5000",
        "--experiment", "impumae", "--subsets", "rna,dna", "rna,dna,mri", "--trials", "2",
    ]
    env.update(RAY_ADDRESS="ray://head:10001", IMPUMAE_EXPERIMENT="gbmlgg")
    out = subprocess.run(["bash", str(ENTRYPOINT)], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[lines.index("--address") + 1] == "ray://head:10001"
    assert lines[lines.index("--experiment") + 1] == "gbmlgg"


@pytest.mark.parametrize("missing", ["IMPUMAE_COHORT", "IMPUMAE_STORAGE", "MLFLOW_TRACKING_URI"])
def test_entrypoint_requires_its_settings(tmp_path, missing):
    env = {
        "PATH": os.environ["PATH"], "IMPUMAE_COHORT": "c", "IMPUMAE_STORAGE": "s",
        "MLFLOW_TRACKING_URI": "m", "IMPUMAE_PYTHON": str(_fake_python(tmp_path)),
    }
    del env[missing]
    out = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and missing in out.stderr


@pytest.mark.skipif(shutil.which("python3") is None, reason="submit.sh needs python3")
def test_submit_script_sends_settings_but_no_secrets(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_ray = bindir / "ray"
    fake_ray.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\necho "AUTH_MODE=$RAY_AUTH_MODE"\n')
    fake_ray.chmod(0o755)
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path),
        "IMPUMAE_COHORT": "s3://bucket/cohort.zarr", "IMPUMAE_STORAGE": "s3://bucket/runs",
        "MLFLOW_TRACKING_URI": "https://mlflow.example.org", "MLFLOW_TRACKING_PASSWORD": "hunter2",
    }
    out = subprocess.run(["bash", str(INFRA / "ray" / "submit.sh"), "--no-wait", "--", "--subset", "rna,dna", "--trials", "3"],
                         env=env, capture_output=True, text=True, check=True)
    argv = out.stdout.splitlines()
    assert argv[:2] == ["job", "submit"]
    assert argv[argv.index("--working-dir") + 1] == str(ROOT)
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"] == {
        "IMPUMAE_COHORT": "s3://bucket/cohort.zarr", "IMPUMAE_STORAGE": "s3://bucket/runs",
        "MLFLOW_TRACKING_URI": "https://mlflow.example.org",
    }
    assert "hunter2" not in out.stdout
    sep = argv.index("--")
    assert "--no-wait" in argv[:sep]
    assert argv[sep + 1:sep + 3] == ["bash", "infra/entrypoint.sh"]
    assert argv[sep + 3:sep + 7] == ["--subset", "rna,dna", "--trials", "3"]
    assert "AUTH_MODE=token" in argv
    # Credentials inside the URI are refused.
    env["MLFLOW_TRACKING_URI"] = "https://user:hunter2@mlflow.example.org"
    out = subprocess.run(["bash", str(INFRA / "ray" / "submit.sh")], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "hunter2" not in out.stdout


def test_docs_use_the_one_entrypoint():
    ray_readme = (INFRA / "ray" / "README.md").read_text()
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    for text in (ray_readme, scaling):
        assert "ray job submit" in text and "-- bash infra/entrypoint.sh" in text
    for needle in ("aws s3 sync", "RAY_AUTH_MODE=token", "--app-name basic-auth", "kubectl", "port-forward"):
        assert needle in scaling, needle


# ----------------------------------------------------------------------------------------------
# Container image


def _dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


def test_dockerfile_pins_ray_image_and_installs_the_project():
    text = DOCKERFILE.read_text()
    args = _dockerfile_args(text)
    base = args["RAY_IMAGE"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)(@sha256:[0-9a-f]{64})?", base)
    assert m, f"base image {base!r} is not a pinned Ray GPU image"
    assert m.group(1) == RAY_VERSION, "the Ray image and pyproject.toml pin different Ray versions"
    assert f">={m.group(2)}.{m.group(3)}" in _pyproject()["project"]["requires-python"]
    assert re.search(r"^FROM\s+\$\{RAY_IMAGE\}", text, flags=re.M)
    assert args["TORCH_VERSION"] == _pin("torch"), "torch in the image != torch in pyproject.toml"
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in text
    assert "pyproject.toml" in text and re.search(r"pip install --no-deps \.", text), "the project is not installed"
    assert "s3fs" in text and "gcsfs" in text
    for d in ("impumae", "experiments", "search_spaces", "infra"):
        assert re.search(rf"^COPY .*\b{d}\b", text, flags=re.M), f"{d}/ is not copied"
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore, "Dockerfile.dockerignore should start from nothing (*) and let in what is copied"
    for d in ("!impumae/", "!experiments/", "!search_spaces/", "!infra/", "!pyproject.toml"):
        assert d in ignore, f"Dockerfile.dockerignore keeps {d[1:]} out of the build context"


def test_mlflow_image_matches_the_mlflow_pin():
    text = (INFRA / "docker" / "mlflow.Dockerfile").read_text()
    assert _dockerfile_args(text)["MLFLOW_VERSION"] == _pin("mlflow")
    (_, dep), = _by_kind("Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":" + _pin("mlflow"))


def test_every_impumae_image_has_the_same_tag():
    tags = set()
    for path in _yaml_files():
        for image in re.findall(r"image:\s*(\S+)", path.read_text()):
            if image.rsplit("/", 1)[-1].startswith("impumae:"):
                tags.add(image.rsplit(":", 1)[1])
    assert len(tags) == 1, tags
    (tag,) = tags
    assert tag.startswith(_pyproject()["project"]["version"]) and f"ray{RAY_VERSION}" in tag


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
