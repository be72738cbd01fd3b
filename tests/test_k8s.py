"""What can be checked of deploy/k8s/ without a cluster: each kustomization rendered (by
`kubectl kustomize` where it is installed, and always by the small renderer below, which must
agree with it), core kinds validated against the Kubernetes 1.32 schemas that
kubernetes-validate ships (offline), every command and probe against the real CLI, every
variable against the real settings, and the KEDA triggers against fleet's real queue keys."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from fleet.cli import build_parser
from fleet.keys import queue_key
from fleet.registry import Queue
from fleet.settings import Settings, env_names, parse_sentinel_url

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.32.0"
"""The schemas validated against: the oldest Kubernetes still supported upstream when written."""
KUSTOMIZATIONS = [
    "overlays/board",
    "overlays/standalone",
    "overlays/sentinel",
    "rethumb",
    "overlays/board/rethumb",
]
OVERLAYS = ["overlays/board", "overlays/standalone", "overlays/sentinel"]
FLEET_IMAGES = ("fleet-img", "fleet-rating")
CORE_KINDS = {
    "Deployment",
    "Job",
    "Service",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
}
RENDER_PEAK_RSS_MB = 200
"""A render process's peak RSS (README, Performance: about 160-200 MB under RENDER_MEMORY_MB=1536)."""

Doc = dict[str, Any]


# --- rendering ----------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[Doc]:
    """``kustomize build`` for what these kustomizations use: resources (files and folders),
    ``labels`` (metadata only), ``images`` (newName/newTag/digest) and JSON 6902 ``patches``
    aimed by kind and name. Anything else is refused, so a new feature needs a renderer change."""
    kustomization = load_docs(folder / "kustomization.yaml")[0]
    known = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
    assert set(kustomization) <= known, f"{folder}: renderer lacks {set(kustomization) - known}"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        docs += render(path) if path.is_dir() else [copy.deepcopy(d) for d in load_docs(path)]
    for entry in kustomization.get("labels", []):
        assert set(entry) == {"pairs"}, f"{folder}: labels other than plain pairs"
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for container in containers_of(docs):
            set_image(container, image)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        for doc in docs:
            name = doc["metadata"]["name"]
            if doc["kind"] == target["kind"] and target.get("name", name) == name:
                for op in yaml.safe_load(patch["patch"]):
                    apply_op(doc, op)
    return docs


def set_image(container: Doc, image: Doc) -> None:
    name, _, _ = container["image"].partition("@")
    name, colon, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    if name != image["name"]:
        return
    name = image.get("newName", name)
    if "digest" in image:
        container["image"] = f"{name}@{image['digest']}"
    else:
        container["image"] = f"{name}:{image['newTag']}" if "newTag" in image else f"{name}{colon}{tag}"


def apply_op(doc: Doc, op: Doc) -> None:
    """One JSON 6902 ``replace`` or ``add``: all these patches need."""
    assert op["op"] in ("replace", "add"), op
    *parents, last = op["path"].strip("/").split("/")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        node[index : index + (op["op"] == "replace")] = [op["value"]]
    else:
        assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
        node[last] = op["value"]


def kubectl_render(folder: Path) -> list[Doc] | None:
    """What the real kustomize renders, or None where neither kubectl nor kustomize is installed."""
    if kubectl := shutil.which("kubectl"):
        argv = [kubectl, "kustomize", str(folder)]
    elif kustomize := shutil.which("kustomize"):
        argv = [kustomize, "build", str(folder)]
    else:
        return None
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    return by_key(docs)[(kind, name)]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def containers_of(docs: list[Doc]) -> Iterator[Doc]:
    for _, spec in pod_specs(docs):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def is_fleet(container: Doc) -> bool:
    return container["image"].split(":")[0].split("@")[0].rsplit("/", 1)[-1] in FLEET_IMAGES


def fleet_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The environment a fleet container gets from these manifests: its envFrom sources in
    order (the last wins), then its own ``env``. A source not in the manifests (the board's
    .env, made by the operator) gives nothing here."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if ref in source and (found := by_key(docs).get((kind, source[ref]["name"]))):
                env.update(found.get("data", {}) | found.get("stringData", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def settings_of(docs: list[Doc], container: Doc) -> Settings:
    return Settings.from_env(fleet_env(docs, container))


def workers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    """Each fleet worker Deployment with its pod spec and its container."""
    for doc, spec in pod_specs(docs):
        for container in spec["containers"]:
            if doc["kind"] == "Deployment" and is_fleet(container):
                yield doc, spec, container


def serving(docs: list[Doc], deployment: str) -> tuple[Doc, Doc]:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


RENDERED = {name: render(K8S / name) for name in KUSTOMIZATIONS}


# --- tests --------------------------------------------------------------------------------------


def test_every_manifest_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in load_docs(path):
            assert {"apiVersion", "kind"} <= set(doc), path


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kustomize(name: str) -> None:
    real = kubectl_render(K8S / name)
    if real is None:
        pytest.skip("neither kubectl nor kustomize installed: the Python renderer alone is used")
    assert by_key(RENDERED[name]) == by_key(real)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_core_kinds_validate_against_the_kubernetes_schemas(name: str) -> None:
    docs = RENDERED[name]
    assert {d["kind"] for d in docs} - {"ScaledObject", "TriggerAuthentication"} <= CORE_KINDS
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error


@pytest.mark.parametrize("name", OVERLAYS)
def test_keda_scales_on_fleets_real_queue_keys(name: str) -> None:
    """KEDA counts the key fleet's workers serve: a wrong NAMESPACE or queue name would scale on
    a key nobody writes, silently. Its target stays above what one replica holds running (ZCARD
    counts running jobs too), or busy replicas alone would ask for more."""
    docs = RENDERED[name]
    expected = {
        "fleet-img": (Queue.IMG, lambda s, cpus: s.img_max_jobs or 2 * (s.img_pool_size or cpus)),
        "fleet-img-bulk": (Queue.IMG_BULK, lambda s, cpus: s.bulk_max_jobs),
    }
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in scaled} == set(expected)
    for doc in scaled:
        target = doc["spec"]["scaleTargetRef"]["name"]
        queue, running_per_replica = expected[target]
        _, container = serving(docs, target)
        assert build_parser().parse_args(container["command"][1:]).kinds == ["img"]
        settings = settings_of(docs, container)
        cpus = math.ceil(float(container["resources"]["limits"]["cpu"]))
        (trigger,) = doc["spec"]["triggers"]
        assert trigger["type"] == ("redis-sentinel" if name == "overlays/sentinel" else "redis")
        assert trigger["metadata"]["listName"] == queue_key(settings.namespace, queue)
        assert int(trigger["metadata"]["listLength"]) > running_per_replica(settings, cpus)


def test_keda_behind_sentinel_asks_the_sentinels_fleet_asks() -> None:
    """The redis-sentinel triggers find the primary as the workers do: the same sentinels,
    primary's name and database as the workers' redis+sentinel:// URL; the password comes
    from the Secret (the URL in the ConfigMap has none)."""
    docs = RENDERED["overlays/sentinel"]
    for _, _, container in workers(docs):
        settings = settings_of(docs, container)
        assert settings.redis_url and settings.confirm_replicas == 1  # enqueues wait for a replica
        url = parse_sentinel_url(settings.redis_url)
        for doc in docs:
            if doc["kind"] != "ScaledObject":
                continue
            metadata = doc["spec"]["triggers"][0]["metadata"]
            addresses = [a.strip().rpartition(":") for a in metadata["addresses"].split(",")]
            assert [(host, int(port)) for host, _, port in addresses] == list(url.sentinels)
            assert metadata["sentinelMaster"] == url.master
            assert int(metadata["databaseIndex"]) == url.database
    auth = one(docs, "TriggerAuthentication", "fleet-redis")["spec"]["secretTargetRef"]
    assert [ref["parameter"] for ref in auth] == ["password"]  # no address: the sentinels say


def redis_db(url: str) -> int:
    return int(urlsplit(url).path.strip("/") or 0)


def test_keda_reads_the_queues_redis_database() -> None:
    """KEDA takes host:port and a database index, not fleet's URL: both must name the queue's
    Redis. The board's queue is its ARQ_REDIS_URL (DB 1 in the board's .env); standalone's is
    the REDIS_URL of its own Secret."""
    board_env = dict(
        line.split("=", 1)
        for line in (ROOT / "compose" / "board.env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    standalone = RENDERED["overlays/standalone"]
    standalone_url = one(standalone, "Secret", "board-env")["stringData"]["REDIS_URL"]
    keda_secret = one(standalone, "Secret", "fleet-keda-redis")["stringData"]
    assert keda_secret["address"] == urlsplit(standalone_url).netloc
    queue_urls = {"overlays/board": board_env["ARQ_REDIS_URL"], "overlays/standalone": standalone_url}
    for name, url in queue_urls.items():
        for doc in RENDERED[name]:
            if doc["kind"] == "ScaledObject":
                assert int(doc["spec"]["triggers"][0]["metadata"]["databaseIndex"]) == redis_db(url), name


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_command_and_probe_is_a_fleet_command(name: str) -> None:
    docs = RENDERED[name]
    seen = 0
    for container in containers_of(docs):
        if not is_fleet(container):
            continue
        argvs = [container["command"] + container.get("args", [])]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                argvs.append(container[probe]["exec"]["command"])
        for argv in argvs:
            assert argv[0] == "fleet", argv
            build_parser().parse_args(argv[1:])  # SystemExit (a failure) if the CLI refuses it
            seen += 1
    assert seen


def test_probes_judge_only_their_own_pod() -> None:
    for name in OVERLAYS:
        for _, _, container in workers(RENDERED[name]):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["exec"]["command"] == ["fleet", "health", "--self"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_variable_is_a_fleet_setting_and_valid(name: str) -> None:
    docs = RENDERED[name]
    known = env_names()
    for container in containers_of(docs):
        if not is_fleet(container):
            continue
        env = fleet_env(docs, container)
        assert set(env) <= known, f"not fleet settings: {sorted(set(env) - known)}"
        last = container["envFrom"][-1]
        assert last == {"configMapRef": {"name": "fleet-settings"}}, "fleet's own settings must win"
        settings_of(docs, container)  # SettingsError if a value is refused


def test_termination_grace_outlasts_the_drain() -> None:
    for name in OVERLAYS:
        for doc, spec, container in workers(RENDERED[name]):
            drain = settings_of(RENDERED[name], container).drain_grace_s
            assert spec["terminationGracePeriodSeconds"] > drain, doc["metadata"]["name"]


def test_pods_run_as_non_root_with_an_fs_group() -> None:
    for name in KUSTOMIZATIONS:
        for doc, spec in pod_specs(RENDERED[name]):
            if not all(is_fleet(c) for c in spec["containers"]):
                continue
            context = spec["securityContext"]
            assert context["runAsNonRoot"] and context["runAsUser"] == 10001, doc["metadata"]["name"]
            assert context["fsGroup"] == 10001
            for container in spec["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_images_are_pinned() -> None:
    for name in KUSTOMIZATIONS:
        for container in containers_of(RENDERED[name]):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), image


def test_metrics_are_scraped_where_they_are_served() -> None:
    for name in OVERLAYS:
        docs = RENDERED[name]
        for doc, _, container in workers(docs):
            settings = settings_of(docs, container)
            annotations = doc["spec"]["template"]["metadata"]["annotations"]
            assert settings.metrics_host == "0.0.0.0"
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == settings.metrics_port
            assert {"name": "metrics", "containerPort": settings.metrics_port} in container["ports"]


def test_render_workers_have_memory_for_their_pool() -> None:
    """Pool = CPU limit (IMG_POOL_SIZE=0 reads the cgroup quota), plus the upload reserve: each
    render process at its measured peak must fit the request, and one at its address-space
    limit must fit the limit. CPU request = limit: the pool was sized for those CPUs."""
    for name in OVERLAYS:
        docs = RENDERED[name]
        for doc, _, container in workers(docs):
            if build_parser().parse_args(container["command"][1:]).kinds != ["img"]:
                continue
            settings = settings_of(docs, container)
            resources = container["resources"]
            assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
            pool = settings.img_pool_size or math.ceil(float(resources["limits"]["cpu"]))
            processes = pool + settings.img_upload_reserve
            assert mebibytes(resources["requests"]["memory"]) >= processes * RENDER_PEAK_RSS_MB
            assert mebibytes(resources["limits"]["memory"]) >= (
                processes * RENDER_PEAK_RSS_MB + settings.render_memory_mb
            ), doc["metadata"]["name"]


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity.removesuffix(unit)) * factor
    raise AssertionError(f"memory quantity {quantity!r} in an unexpected unit")


def test_every_worker_has_a_disruption_budget() -> None:
    for name in OVERLAYS:
        docs = RENDERED[name]
        budgets = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
        for doc, _, _ in workers(docs):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert any(selector.items() <= labels.items() for selector in budgets), doc["metadata"]["name"]
