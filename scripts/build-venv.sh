#!/bin/sh
# The virtualenv an image ships, built the one way both its Dockerfile and the packaging
# tests (tests/packaging/test_image_envs.py) build it, so the two cannot drift apart.
#
#   scripts/build-venv.sh IMAGE VENV [deps|project|all]
#
# IMAGE is operator or runtime. Run it from a tree holding requirements/ and IMAGE/ (the
# Docker build context, or a copy of it); PYTHON names the interpreter (python3).
#   deps     a virtualenv at VENV with requirements/build.lock, then requirements/IMAGE.lock:
#            hash-checked, wheels only (no compiler runs, nothing unpinned comes in); then
#            the test suites the wheels ship (every `tests` folder under site-packages:
#            scipy's, numpy's, scikit-learn's, about 65 MB of the runtime's venv) are removed,
#            nothing imports them. Bytecode (__pycache__) stays: the images run with
#            PYTHONDONTWRITEBYTECODE on a read-only filesystem, so without it every start
#            would compile every module again
#   project  the IMAGE/ distribution (modelship-IMAGE) without its dependencies, the build
#            tools removed again, then `pip check`: a dependency IMAGE/pyproject.toml
#            declares that the lock lacks fails the build here, not the pod at start
#   all      both (the default)
# The Dockerfiles run deps and project apart, so a source change does not reinstall the
# locked dependencies.
set -eu

usage() {
  echo "usage: $0 operator|runtime VENV [deps|project|all]" >&2
  exit 2
}
[ $# -ge 2 ] && [ $# -le 3 ] || usage
image="$1"
venv="$2"
phase="${3:-all}"
case "$image" in operator|runtime) ;; *) usage ;; esac
case "$phase" in deps|project|all) ;; *) usage ;; esac
for needed in requirements/build.lock "requirements/$image.lock" "$image/pyproject.toml"; do
  [ -f "$needed" ] || { echo "$0: $needed missing (run from the repository's root)" >&2; exit 2; }
done
pip="$venv/bin/pip"

if [ "$phase" != project ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$pip" install --require-hashes --only-binary=:all: -r requirements/build.lock
  "$pip" install --require-hashes --only-binary=:all: -r "requirements/$image.lock"
  find "$venv"/lib/python*/site-packages -mindepth 2 -type d -name tests -prune \
    -exec rm -rf {} +
fi
if [ "$phase" != deps ]; then
  "$pip" install --no-deps --no-build-isolation "./$image"
  "$pip" uninstall --yes setuptools wheel
  "$pip" check
fi
