#!/bin/bash
# Installs what sandbox_magic needs on a fresh Debian 12 machine, idempotently:
#   - runsc from bookworm-backports (the stock bookworm build breaks `ls` inside
#     the sandbox, see ../shared/DESIGN.md §3) and iptables, via apt;
#   - a virtualenv in .venv made from Debian's /usr/bin/python3 (readable by
#     every user, which the non-root tests need), with the package installed;
#   - with --test: the test extras (pytest, JupyterLab, Playwright), Debian's
#     chromium for the browser tests (Playwright drives it; no browser download),
#     and a cached copy of the stock 0.0~20221219.0 runsc, so that the integration
#     tests run against both Debian builds.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: installing system packages needs root; rerun with sudo" >&2
        exit 1
    fi
}

apt_uri() {
    # The archive URI of the machine's existing bookworm entry (deb822 or one-line form).
    local uri
    uri=$(grep -hs -A3 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
          awk '/^URIs:/ {u=$2} /^Suites:.*bookworm( |$)/ {print u; exit}')
    if [[ -z "$uri" ]]; then
        uri=$(grep -hs '^deb .* bookworm ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
              awk '{print $2; exit}')
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

add_backports() {
    if apt-cache policy runsc 2>/dev/null | grep -q bookworm-backports; then return; fi
    local file=/etc/apt/sources.list.d/sandbox-magic-bookworm-backports.sources
    echo "setup: adding bookworm-backports to apt sources ($file)"
    cat >"$file" <<SRC
Types: deb
URIs: $(apt_uri)
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
}

runsc_is_good() {
    command -v runsc >/dev/null && ! runsc --version 2>/dev/null | grep -q '20221219'
}

install_system_packages() {
    local missing=()
    runsc_is_good || missing+=(runsc)
    command -v iptables >/dev/null || missing+=(iptables)
    /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    [[ $WITH_TEST -eq 1 && ! -x /usr/bin/chromium ]] && missing+=(chromium)
    [[ ${#missing[@]} -eq 0 ]] && return
    need_root
    export DEBIAN_FRONTEND=noninteractive
    if [[ " ${missing[*]} " == *" runsc "* ]] && grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
        add_backports
        apt-get install -y -qq -t bookworm-backports runsc >/dev/null
        missing=("${missing[@]/runsc}")
    fi
    [[ -n "${missing[*]// /}" ]] || return 0
    apt-get update -qq || true
    # shellcheck disable=SC2068
    apt-get install -y -qq ${missing[@]} >/dev/null
}

cache_stock_runsc() {
    # The stock Debian 12 runsc, kept beside the project for the version matrix in the tests.
    local dir=.cache/runsc-20221219
    [[ -x $dir/runsc ]] && return
    mkdir -p "$dir"
    (cd "$dir" && apt-get download -qq 'runsc=0.0~20221219.0-2+b3' 2>/dev/null)
    dpkg-deb -x "$dir"/runsc_*.deb "$dir/extract"
    cp "$dir/extract/usr/bin/runsc" "$dir/runsc"
    rm -rf "$dir/extract" "$dir"/runsc_*.deb
}

make_venv() {
    local extras="" stamp
    [[ $WITH_TEST -eq 1 ]] && extras="[test]"
    stamp=".venv/.installed$extras-$(sha256sum pyproject.toml | cut -c1-16)"
    [[ -f "$stamp" ]] && return
    [[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv .venv
    # pip's log goes to a file: the machine's pip config makes it chatty.
    if ! .venv/bin/pip install -q -e ".$extras" >.venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "setup: pip install failed (log above, also in .venv/pip.log)" >&2
        exit 1
    fi
    touch "$stamp"
}

install_system_packages
[[ $WITH_TEST -eq 1 ]] && cache_stock_runsc
make_venv
echo "setup: ready ($(runsc --version | head -1); venv .venv)"
