#!/usr/bin/env bash
# Regenerates the synthetic speech clips in tests/data/ and their manifest clips.json.
#
# The clips are synthesized with espeak-ng rather than recorded so that their
# provenance is unambiguous (no licensing questions) and anyone can rebuild them.
# espeak-ng writes 22.05 kHz audio; sox converts it to the format every test
# assumes: 16 kHz, mono, 16-bit PCM WAV.
#
# Requires: espeak-ng, sox (Debian: apt-get install -y espeak-ng sox)
# Usage:    tests/data/make_clips.sh          (run from anywhere)
set -euo pipefail

cd "$(dirname "$0")"

SPEED=150  # words per minute; espeak's default (175) is hard to follow for small models

# name|espeak voice|whisper language code|text
CLIPS=(
  "en_fox.wav|en-us|en|The quick brown fox jumps over the lazy dog."
  "en_stella.wav|en-us|en|Please call Stella and ask her to bring these things with her from the store."
  "en_weather.wav|en-us|en|The weather today is sunny and warm, with a light breeze from the west."
  "en_library.wav|en-us|en|My sister walked to the library to return her books before it closed."
  "en_breakfast.wav|en-us|en|We need to buy fresh bread, milk and some apples for breakfast."
  "de_kaffee.wav|de|de|Ich trinke jeden Morgen eine Tasse Kaffee mit Milch."
  "fr_cafe.wav|fr|fr|Bonjour, je voudrais un café et un croissant, s'il vous plaît."
  "es_parque.wav|es|es|Me gusta caminar por el parque con mi perro los domingos."
)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

manifest="$tmp/clips.json"
printf '{\n' >"$manifest"
for i in "${!CLIPS[@]}"; do
  IFS='|' read -r name voice lang text <<<"${CLIPS[$i]}"
  espeak-ng -v "$voice" -s "$SPEED" -w "$tmp/raw.wav" "$text"
  # -G guards against clipping from the resampler; -D turns off sox's random
  # dither so that reruns give byte-identical files
  sox -G -D "$tmp/raw.wav" -b 16 -c 1 -r 16000 -e signed-integer "$name"
  sep=","
  if [[ "$i" -eq $((${#CLIPS[@]} - 1)) ]]; then sep=""; fi
  printf '  "%s": {"text": "%s", "language": "%s"}%s\n' "$name" "$text" "$lang" "$sep" >>"$manifest"
done
printf '}\n' >>"$manifest"
mv "$manifest" clips.json

for name in *.wav; do
  printf '%-18s %6.2f s\n' "$name" "$(soxi -D "$name")"
done
