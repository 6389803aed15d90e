# Shared by scripts/*: a project virtualenv in .venv with ATAS installed (editable, with dev extras).
# Sourced, not executed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }

pick_python() {
    for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    say "Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)"; exit 2
}

ensure_venv() {
    local extras="${1:-dev}"
    local stamp=".venv/.atas-installed-$extras"
    # A venv left half-made (e.g. Debian without python3-venv's pip) is rebuilt, not reused.
    if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
        say "the virtual environment in .venv is incomplete; recreating it"
        rm -rf .venv
    fi
    if [ ! -x .venv/bin/python ]; then
        say "creating virtual environment in .venv"
        "$(pick_python)" -m venv .venv
    fi
    # Reinstall only when the dependency list changed.
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        say "installing ATAS and its dependencies (first run takes a minute)"
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".[$extras]"
        touch "$stamp"
    fi
    export PATH="$ROOT/.venv/bin:$PATH"
}

apt_install() {
    # apt_install COMMAND PACKAGE: install a Debian package when COMMAND is missing and we are root.
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing $pkg (apt-get)"
        if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; _APT_UPDATED=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    else
        say "$cmd is missing: install the Debian package '$pkg' (sudo apt-get install $pkg)"; return 1
    fi
}
