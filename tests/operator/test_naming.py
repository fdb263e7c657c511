"""Child names are valid, stable, and never shared by two ModelDeployments.

The injectivity proof is constructive: for every kind, a ModelDeployment's name can be
read back from each of its children's names (`owner_of`), so two ModelDeployments
with different names cannot produce the same child name. Hypothesis searches names
and versions built from the pieces that made the old scheme collide (`-canary`,
`-v1`, `b-1`, ...) for a counter-example.
"""

from __future__ import annotations

import hashlib
import re

import pydantic
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from modelship_operator import api, labels, naming
from modelship_operator.reconcile import validation_message

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Names from tokens that look like the suffixes children get, so near-collisions are
# tried on purpose; plus arbitrary valid names.
_TOKENS = ["a", "b", "iris", "canary", "v1", "v", "1", "h0", "x", "b1", "vb", "v12"]
_tokened = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=6).map("-".join)
_arbitrary = st.from_regex(r"\A[a-z]([-a-z0-9]{0,34}[a-z0-9])?\Z")
md_names = st.one_of(_tokened, _arbitrary).filter(lambda n: naming.md_name_problem(n) is None)
# Versions: MLflow's numbers, short words, ones with '-' (which the old scheme turned into
# the name of another ModelDeployment's Deployment), long ones, and anything at all.
versions = st.one_of(
    st.integers(min_value=1, max_value=10**40).map(str),
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=4).map("-".join),
    st.from_regex(r"\A[a-z0-9]{1,12}\Z"),
    st.text(min_size=1, max_size=80),
)

KINDS = ("Service", "Ingress", "HTTPRoute", "ServiceAccount", "PodDisruptionBudget",
         "NetworkPolicy", "Deployment", "HorizontalPodAutoscaler")


def children(md_name: str, served: list[str]) -> set[tuple[str, str]]:
    """(kind, name) of every child a ModelDeployment can have while `served` versions run."""
    found = {(kind, naming.service_name(md_name)) for kind in KINDS[:6]}
    found |= {(kind, naming.canary_service_name(md_name)) for kind in ("Service", "Ingress")}
    for version in served:
        found |= {(kind, naming.deployment_name(md_name, version)) for kind in KINDS[6:]}
    return found


def owner_of(kind: str, name: str) -> str:
    """The ModelDeployment name a child name was made from (the left inverse of naming)."""
    if kind in ("Deployment", "HorizontalPodAutoscaler"):
        owner, tag = name.rsplit("-", 1)
        assert re.fullmatch(r"v[a-z0-9]{1,8}|h[0-9a-f]{8}", tag), name
        return owner
    owner, sep, role = name.partition(naming.SEPARATOR)
    assert not sep or role == naming.CANARY, name
    return owner


def assert_dns_label(name: str, limit: int = 63) -> None:
    assert len(name) <= limit, name
    assert DNS_1035.match(name), name


def assert_label_value(value: str) -> None:
    assert len(value) <= 63, value
    assert LABEL_VALUE.match(value), value


# --- the names users see ------------------------------------------------------------------


@pytest.mark.parametrize("md_name", ["iris", "fraud-detector", "a", "iris-canary", "a-b"])
def test_stable_names_are_the_modeldeployment_name(md_name: str) -> None:
    assert naming.service_name(md_name) == md_name
    assert naming.deployment_name(md_name, "3") == f"{md_name}-v3"
    assert naming.canary_service_name(md_name) == f"{md_name}--canary"


@pytest.mark.parametrize(
    ("version", "tag"),
    [("3", "v3"), ("12345678", "v12345678"), ("rc1", "vrc1"),
     ("123456789", "h" + hashlib.sha256(b"123456789").hexdigest()[:8]),
     ("b-1", "h" + hashlib.sha256(b"b-1").hexdigest()[:8]),
     ("V3", "h" + hashlib.sha256(b"V3").hexdigest()[:8])],
)
def test_version_tags(version: str, tag: str) -> None:
    assert naming.version_tag(version) == tag


# --- which ModelDeployment names are allowed ------------------------------------------------


@pytest.mark.parametrize(
    "md_name",
    ["iris--canary", "a--b", "x" * 37, "3iris", "iris.prod", "Iris", "-iris", "iris-", "",
     "iris_2", "ïris"],
)
def test_names_that_could_collide_or_not_fit_are_refused(md_name: str) -> None:
    problem = naming.md_name_problem(md_name)
    assert problem is not None and repr(md_name) in problem
    assert "at most 36 characters" in problem and "no '--'" in problem
    with pytest.raises(ValueError, match=r"metadata\.name: "):
        naming.service_name(md_name)
    with pytest.raises(ValueError, match=r"metadata\.name: "):
        naming.deployment_name(md_name, "1")


@pytest.mark.parametrize("md_name", ["iris", "iris-canary", "a-b", "v1", "x" * 36, "a1-b2-c3"])
def test_names_that_fit_are_accepted(md_name: str) -> None:
    assert naming.md_name_problem(md_name) is None


def test_the_api_and_the_crd_state_the_same_name_rule() -> None:
    from pathlib import Path

    import yaml

    crd = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "crds" / "modelship.io_modeldeployments.yaml")
        .read_text()
    )
    (rule,) = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert rule["message"] == f"metadata.name: {naming.MD_NAME_RULE}"
    assert f"<= {naming.MAX_MD_NAME}" in rule["rule"] and f"'{naming.SEPARATOR}'" in rule["rule"]
    body = {"metadata": {"name": "iris--canary"}, "spec": {"model": {"name": "m", "version": "1"}}}
    with pytest.raises(pydantic.ValidationError) as info:
        api.ModelDeployment.from_body(body)
    # What the operator puts in the Stalled condition of such an object.
    assert validation_message(info.value) == (
        f"metadata.name: 'iris--canary' is not a valid ModelDeployment name: use "
        f"{naming.MD_NAME_RULE}"
    )


# --- injectivity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "a_versions", "b", "b_versions"),
    [
        ("iris", ["1", "2"], "iris-canary", ["1", "2"]),  # the pair that fought
        ("a-b", ["1"], "a", ["b-1"]),  # a-b-v1 against a + version "b-1"
        ("a-v1", ["2"], "a", ["1-v2"]),
        ("a-v1", ["2"], "a", ["v1-v2", "1"]),
        ("iris-v2", ["1"], "iris", ["2"]),  # iris-v2-v1 against iris-v2
        ("a-h0", ["1"], "a", ["0"]),
    ],
)
def test_known_pairs_share_no_child_name(
    a: str, a_versions: list[str], b: str, b_versions: list[str]
) -> None:
    assert children(a, a_versions).isdisjoint(children(b, b_versions))


@settings(max_examples=1500, deadline=None)
@given(md_names, st.lists(versions, min_size=1, max_size=3))
@example("iris-canary", ["1"])
@example("a-b", ["1", "b-1"])
def test_every_child_name_gives_back_its_owner(md_name: str, served: list[str]) -> None:
    """A left inverse exists for every kind, hence no two owners share a child name."""
    for kind, name in children(md_name, served):
        assert owner_of(kind, name) == md_name


@settings(max_examples=1500, deadline=None)
@given(md_names, st.lists(versions, max_size=3), md_names, st.lists(versions, max_size=3))
@example("iris", ["1", "2"], "iris-canary", ["1"])
@example("a-b", ["1"], "a", ["b-1"])
@example("a", ["b-1"], "a-b", ["1"])
@example("a-v1", ["2"], "a", ["1-v2"])
def test_two_modeldeployments_share_no_child_name(
    a: str, a_served: list[str], b: str, b_served: list[str]
) -> None:
    assume(a != b)
    shared = children(a, a_served) & children(b, b_served)
    assert shared == set()


@settings(max_examples=500, deadline=None)
@given(md_names, versions)
def test_child_names_are_valid_and_fit(md_name: str, version: str) -> None:
    assert_dns_label(naming.service_name(md_name))
    assert_dns_label(naming.canary_service_name(md_name))
    deployment = naming.deployment_name(md_name, version)
    assert_dns_label(deployment, naming.MAX_DEPLOYMENT_NAME)
    assert deployment == naming.deployment_name(md_name, version)
    # The API server names a pod DEPLOYMENT-<hash, up to 10>-<5 random>, from a base it
    # cuts at 58 characters: within 46, the pod's name is whole and names its Deployment.
    base = f"{deployment}-{'b' * 10}-"
    assert len(base) <= 58
    assert (base + "x7k2p").rsplit("-", 2)[0] == deployment


@settings(max_examples=500, deadline=None)
@given(md_names, versions, versions)
def test_versions_of_one_modeldeployment_differ_unless_hashes_meet(
    md_name: str, v1: str, v2: str
) -> None:
    assume(v1 != v2)
    tags = {naming.version_tag(v1), naming.version_tag(v2)}
    if len(tags) == 1:  # only two hashed versions can meet: render refuses that pair
        assert all(t.startswith("h") for t in tags)
    else:
        assert naming.deployment_name(md_name, v1) != naming.deployment_name(md_name, v2)


# --- label values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iris-classifier", "iris-classifier"),
        ("Iris_Classifier.v2", "Iris_Classifier.v2"),
        ("3", "3"),
        ("", ""),
    ],
)
def test_valid_label_values_are_unchanged(text: str, expected: str) -> None:
    assert naming.label_value(text) == expected


@pytest.mark.parametrize(
    "model_name",
    ["Iris Classifier", "team/iris", "Ïris-ünïcode-模型", "  spaces  ", "-x-", "a" * 300, "..."],
)
def test_odd_model_names_give_valid_label_values(model_name: str) -> None:
    value = naming.label_value(model_name)
    assert_label_value(value)
    assert value == naming.label_value(model_name)
    assert value != ""


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_label_values_always_valid_and_stable(text: str) -> None:
    value = naming.label_value(text)
    assert_label_value(value)
    assert value == naming.label_value(text)
    assert value


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_distinct_model_names_do_not_collide(a: str, b: str) -> None:
    if a != b:
        assert naming.label_value(a) != naming.label_value(b)


@settings(max_examples=200, deadline=None)
@given(md_names, md_names)
def test_modeldeployment_names_are_their_own_label_values(a: str, b: str) -> None:
    """Pod selectors use the name as it is, so two ModelDeployments never select alike."""
    assert naming.label_value(a) == a
    assert labels.deployment_selector(a) == {labels.DEPLOYMENT: a}
    if a != b:
        assert labels.version_selector(a, "1") != labels.version_selector(b, "1")


def test_near_misses_stay_distinct() -> None:
    """Model names that clean to the same text differ by their hash."""
    names = ["Iris Classifier", "iris classifier", "iris_classifier ", "iris/classifier"]
    values = {naming.label_value(n) for n in names}
    assert len(values) == len(names)
