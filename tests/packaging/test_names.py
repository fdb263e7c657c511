"""One name per image, one per distribution, and one version, wherever they are written.

The images are ghcr.io/modelship/modelship-operator and ghcr.io/modelship/modelship-runtime
(dockerfiles.IMAGE_NAMES); the distributions modelship-operator and modelship-runtime
(`modelship` on PyPI is another project's). Each place that names them is read here: the
chart (values and the rendered default install), the kustomize base and overlays (files
and `kubectl kustomize` output), the operator's default runtime image, the demo, the
Dockerfiles, the images workflow, the Makefile, the locks, the `--version` lookups and
every image reference in the docs, examples and manifests. A place that names nothing
fails as surely as one that names something else.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from artifacts import CHART, OVERLAYS
from dockerfiles import DISTRIBUTIONS, IMAGE_NAMES, IMAGES, REPO, arg_default, stages

#: An image reference to one of ours: a registry path before the name (its first part
#: has a dot: a host), or a tag or digest after it. Not `deploy/modelship-operator` (a
#: kubectl resource) nor `modelship-runtime serve` (a command).
IMAGE_REF = re.compile(
    r"(?<![\w./-])((?:[\w-]+\.[\w.-]+(?::\d+)?/)?(?:[\w.-]+/)*modelship-(operator|runtime))"
    r"([:@][\w.:-]+)?(?![\w/-])")
HOST = re.compile(r"[A-Za-z0-9][\w-]*(?:\.[\w-]+)+(?::\d+)?")  # ghcr.io, r.example.com:5000
#: Where image references are written for people and tools (tests hold examples of others).
SCANNED = [
    REPO / "README.md", REPO / "operator" / "README.md", REPO / "runtime" / "README.md",
    *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "examples").glob("*.yaml")),
    *sorted((REPO / "kustomize").rglob("*.yaml")), CHART / "values.yaml", CHART / "Chart.yaml",
    *sorted((REPO / "scripts").rglob("*.sh")), *IMAGES.values(), REPO / "Makefile",
    *sorted((REPO / ".github" / "workflows").glob("*.y*ml")),
    REPO / "operator" / "modelship_operator" / "settings.py",
]


def _project(image: str) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((REPO / image / "pyproject.toml").read_text())[
        "project"]
    return project


VERSION = _project("operator")["version"]


def _split(ref: str) -> tuple[str, str]:
    """(name, tag or @digest) of an image reference; the tag is '' when there is none."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, "@" + digest
    head, _, last = ref.rpartition("/")
    name, _, tag = last.partition(":")
    return (f"{head}/{name}" if head else name), tag


def _refs(text: str) -> list[tuple[str, str, str]]:
    """(image, name, tag) of every reference to one of our images in `text`."""
    found = []
    for match in IMAGE_REF.finditer(text):
        name, image, tag = match.group(1), match.group(2), match.group(3) or ""
        if tag or ("/" in name and HOST.fullmatch(name.split("/")[0])):
            found.append((image, name, tag.lstrip(":")))
    return found


def test_the_reference_pattern_tells_images_from_other_names() -> None:
    text = ("image: ghcr.io/modelship/modelship-runtime:0.1.0 and modelship-operator:dev\n"
            "kubectl rollout status deploy/modelship-operator; modelship-runtime serve; "
            "`modelship-runtime: ` and app.kubernetes.io/name: modelship-operator; "
            ".venv/bin/modelship-runtime serve; "
            "r.example.com:5000/a/modelship-runtime@sha256:abc")
    assert _refs(text) == [
        ("runtime", "ghcr.io/modelship/modelship-runtime", "0.1.0"),
        ("operator", "modelship-operator", "dev"),
        ("runtime", "r.example.com:5000/a/modelship-runtime", "@sha256:abc"),
    ]
    assert _split("r.example.com:5000/a/b:1.2") == ("r.example.com:5000/a/b", "1.2")


def test_every_image_reference_uses_our_names() -> None:
    wrong, seen = [], set()
    for path in SCANNED:
        for image, name, _tag in _refs(path.read_text()):
            seen.add((path.relative_to(REPO).as_posix(), image))
            if name != IMAGE_NAMES[image]:
                wrong.append(f"{path.relative_to(REPO)}: {name} (ours: {IMAGE_NAMES[image]})")
    assert wrong == []
    # The places users read the names from do name both images (or the one they run).
    for place, image in [("README.md", "operator"), ("README.md", "runtime"),
                         ("charts/modelship/values.yaml", "operator"),
                         ("charts/modelship/values.yaml", "runtime"),
                         ("kustomize/base/deployment.yaml", "operator"),
                         ("kustomize/base/deployment.yaml", "runtime"),
                         ("operator/modelship_operator/settings.py", "runtime"),
                         ("Dockerfile.operator", "operator"), ("Dockerfile.runtime", "runtime")]:
        assert (place, image) in seen, f"{place} names no {image} image"


def test_the_operator_defaults_to_our_runtime_image() -> None:
    from modelship_operator.settings import OperatorSettings

    default = OperatorSettings.model_fields["runtime_image"].default
    assert _split(default) == (IMAGE_NAMES["runtime"], VERSION)


def test_chart_values_and_default_install(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == IMAGE_NAMES["operator"]
    assert values["runtime"]["image"]["repository"] == IMAGE_NAMES["runtime"]
    assert values["image"]["tag"] == values["runtime"]["image"]["tag"] == ""  # appVersion
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION
    operator, runtime = _images_of(rendered["default"])
    assert operator == (IMAGE_NAMES["operator"], VERSION)
    assert runtime == (IMAGE_NAMES["runtime"], VERSION)


def _images_of(objects: list[dict[str, Any]]) -> tuple[tuple[str, str], tuple[str, str]]:
    """(name, tag) of the operator's container and of the runtime image it is given."""
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return _split(container["image"]), _split(env["MODELSHIP_OPERATOR_RUNTIME_IMAGE"])


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_kustomize_builds(name: str, built: dict[str, list[dict[str, Any]]]) -> None:
    operator, runtime = _images_of(built[name])
    tag = "dev" if name == "dev" else VERSION  # dev: the newest build of main
    assert operator == (IMAGE_NAMES["operator"], tag)
    assert runtime == (IMAGE_NAMES["runtime"], tag)


def test_kustomize_image_transformers_name_our_image() -> None:
    folders = [REPO / "kustomize" / "base", *(REPO / "kustomize" / "overlays" / o
                                              for o in OVERLAYS)]
    for folder in folders:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        # An entry whose name matches no image is silently ignored by kustomize.
        assert [i["name"] for i in kustomization["images"]] == [IMAGE_NAMES["operator"]]
        assert all("newName" not in i for i in kustomization["images"]), folder


def test_demo_builds_and_loads_our_names() -> None:
    demo = (REPO / "scripts" / "demo.sh").read_text()
    registry = re.search(r"^REGISTRY=(\S+)$", demo, re.M)
    assert registry is not None
    assert re.search(r"^for image in operator runtime; do$", demo, re.M)
    ref = '"$REGISTRY/modelship-$image:$VERSION"'
    assert f'docker build -q -f "Dockerfile.$image" -t {ref}' in demo
    assert f'kind load docker-image --name "$CLUSTER" {ref}' in demo
    for image in IMAGES:
        assert f"{registry[1]}/modelship-{image}" == IMAGE_NAMES[image]
    assert "operator/pyproject.toml" in re.search(r"^VERSION=.*$", demo, re.M)[0]  # type: ignore[index]


def test_images_workflow_pushes_our_names() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "images.yml").read_text())
    assert 'name="$REGISTRY/modelship-$IMAGE"' in workflow["jobs"]["image"]["steps"][1]["run"]
    for image in workflow["jobs"]["image"]["strategy"]["matrix"]["image"]:
        assert f"{workflow['env']['REGISTRY']}/modelship-{image}" == IMAGE_NAMES[image]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_title_version_and_example_tag(image: str) -> None:
    dockerfile = IMAGES[image]
    final = " ".join(stages(dockerfile)[-1])
    assert f'org.opencontainers.image.title="{DISTRIBUTIONS[image]}"' in final
    assert IMAGE_NAMES[image].rsplit("/", 1)[1] == DISTRIBUTIONS[image]
    assert arg_default(dockerfile, "VERSION") == VERSION
    refs = _refs(dockerfile.read_text())
    assert refs and all(tag == VERSION for _, _, tag in refs), refs


def test_tags_in_docs_and_examples_are_the_version() -> None:
    for path in SCANNED:
        if path.suffix in (".md", ".yaml", ".yml") and "kustomize" not in path.parts:
            for _, name, tag in _refs(path.read_text()):
                if tag:
                    assert tag == VERSION, f"{path.relative_to(REPO)}: {name}:{tag}"


def test_distribution_names_and_versions() -> None:
    import modelship_operator
    import modelship_runtime
    from modelship_operator import cli
    from modelship_runtime import __main__ as runtime_main

    for image, distribution in DISTRIBUTIONS.items():
        project = _project(image)
        assert project["name"] == distribution
        assert project["version"] == VERSION
    assert DISTRIBUTIONS["operator"] == cli.DISTRIBUTION
    assert DISTRIBUTIONS["runtime"] == runtime_main.DISTRIBUTION
    assert modelship_operator.__version__ == modelship_runtime.__version__ == VERSION
    assert "modelship" not in DISTRIBUTIONS.values()  # another project's name on PyPI


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_lock_is_compiled_from_the_images_distribution(image: str) -> None:
    lock = (REPO / "requirements" / f"{image}.lock").read_text()
    assert f"--output-file=requirements/{image}.lock" in lock
    assert re.search(rf"^#    pip-compile .* {image}/pyproject\.toml$", lock, re.M), lock[:400]
    via = set(re.findall(r"#\s+(?:via )?(\S+) \((\S+/pyproject\.toml)\)", lock))
    assert via == {(DISTRIBUTIONS[image], f"{image}/pyproject.toml")}
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    assert re.search(rf"pip-compile .* -o requirements/{image}\.lock {image}/pyproject\.toml",
                     makefile)


def test_makefile_installs_both_distributions() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -e ./operator -e ./runtime --group dev" in makefile
    assert re.search(r"^\$\(STAMP\): pyproject.toml operator/pyproject.toml "
                     r"runtime/pyproject.toml$", makefile, re.M)


def test_pip_install_lines_name_our_distributions() -> None:
    allowed = {*DISTRIBUTIONS.values(), *(f"./{image}" for image in DISTRIBUTIONS)}
    found = []
    for path in (REPO / "README.md", REPO / "operator" / "README.md",
                 REPO / "runtime" / "README.md", *sorted((REPO / "docs").rglob("*.md"))):
        for line in re.findall(r"^\s*pip install (.+)$", path.read_text(), re.M):
            args = [a.strip("'\"") for a in line.split() if not a.startswith("-")]
            found.extend(args)
            bad = [a for a in args if a not in allowed]
            assert bad == [], f"{path.relative_to(REPO)}: pip install {line}"
    assert set(found) >= {"./operator", DISTRIBUTIONS["operator"]}


def test_no_file_is_left_naming_the_old_distribution() -> None:
    """`modelship[...]` and `version("modelship")` meant the single distribution."""
    texts: dict[Path, str] = {}
    for pattern in ("**/*.py", "**/*.md", "**/*.toml", "Makefile", "Dockerfile.*", "**/*.sh"):
        for path in REPO.glob(pattern):
            if ".venv" not in path.parts and ".git" not in path.parts:
                texts[path] = path.read_text(errors="replace")
    old = re.compile(r"modelship\[|version\(\s*[\"']modelship[\"']\s*\)")
    this_file = Path(__file__).resolve()
    stale = [f"{p.relative_to(REPO)}" for p, t in texts.items()
             if p != this_file and old.search(t)]
    assert stale == []
    assert len(texts) > 50
