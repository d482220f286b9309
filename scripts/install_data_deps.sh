#!/usr/bin/env bash
# Install what the offline testbed data needs; safe to run again (each step checks first).
#   - Debian fonts-noto-color-emoji: the Noto emoji style (apt-get; needs root or sudo).
#   - npm @iconify-json/fluent-emoji-flat and emoji-datasource-twitter into .cache/npm:
#     two more art styles of the same emoji, kept inside the project (pinned: the dataset's
#     counts depend on their versions).
#   - pip emoji (names) and resvg-py (SVG rasteriser) into the python named by $PYTHON (default
#     python3); the MiniLM text encoder is a declared dependency of the [data] extra.
# A missing art style only warns (the emoji build skips it); the pip packages are required.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
NPM_PREFIX="${SWD_NPM_DIR:-$ROOT/.cache/npm}"
NOTO_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
NPM_PACKAGES=("@iconify-json/fluent-emoji-flat@1.2.6" "emoji-datasource-twitter@16.0.0")

warn() { echo "warning: $*" >&2; }

install_font() {
    if [ -f "$NOTO_FONT" ] || dpkg -s fonts-noto-color-emoji >/dev/null 2>&1; then
        echo "fonts-noto-color-emoji: present"
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            warn "not root and no sudo: install fonts-noto-color-emoji by hand for the noto style"
            return
        fi
        sudo="sudo"
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "no apt-get: install fonts-noto-color-emoji by hand for the noto style"
        return
    fi
    $sudo apt-get update -q || warn "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends fonts-noto-color-emoji \
        || warn "could not install fonts-noto-color-emoji; the noto style will be skipped"
}

install_npm() {
    if ! command -v npm >/dev/null 2>&1; then
        warn "no npm: the fluent and twitter styles will be skipped"
        return
    fi
    local missing=()
    for spec in "${NPM_PACKAGES[@]}"; do
        local name="${spec%@*}"
        [ -f "$NPM_PREFIX/node_modules/$name/package.json" ] || missing+=("$spec")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "npm packages: present in $NPM_PREFIX"
        return
    fi
    mkdir -p "$NPM_PREFIX"
    npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --save-exact "${missing[@]}" \
        || warn "npm install failed; the fluent and twitter styles will be skipped"
}

install_pip() {
    # pip is idempotent by itself: a second run only reports 'already satisfied'.
    "$PYTHON" -m pip install -q emoji resvg-py
}

install_font
install_npm
install_pip
echo "data dependencies installed"
