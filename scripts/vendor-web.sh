#!/usr/bin/env bash
# Refresh the web demo's vendored libraries (gateway/web/vendor/) from the npm registry.
#
# The served files are plain and committed: users never run this, and the gateway needs no
# network at run time. A maintainer runs it to move to other versions: change a pin below,
# run `scripts/vendor-web.sh`, look at the page, commit gateway/web/vendor/.
set -euo pipefail

MARKDOWN_IT=15.0.3          # markdown parser (CommonMark + tables, strikethrough, linkify)
TEXMATH=1.0.0               # markdown-it-texmath: $…$, $$…$$, \(…\), \[…\] for markdown-it
KATEX=0.19.1                # math typesetting, with its fonts
HIGHLIGHT=11.12.0           # highlight.js browser build (@highlightjs/cdn-assets: common languages)
DOMPURIFY=3.4.18            # HTML sanitizer: everything rendered passes through it

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/gateway/web/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

npm install --prefix "$work" --no-save --ignore-scripts --no-audit --no-fund --loglevel=error \
  "markdown-it@$MARKDOWN_IT" "markdown-it-texmath@$TEXMATH" "katex@$KATEX" \
  "@highlightjs/cdn-assets@$HIGHLIGHT" "dompurify@$DOMPURIFY" >/dev/null
nm="$work/node_modules"

rm -rf "$out"
mkdir -p "$out/markdown-it" "$out/texmath" "$out/katex/fonts" "$out/highlight" "$out/dompurify"

cp "$nm/markdown-it/dist/browser/markdown-it.umd.min.js" "$out/markdown-it/markdown-it.min.js"
cp "$nm/markdown-it/LICENSE" "$out/markdown-it/LICENSE"

cp "$nm/markdown-it-texmath/texmath.js" "$out/texmath/texmath.js"
cp "$nm/markdown-it-texmath/license.txt" "$out/texmath/LICENSE"

cp "$nm/katex/dist/katex.min.js" "$out/katex/katex.min.js"
cp "$nm/katex/LICENSE" "$out/katex/LICENSE"
cp "$nm"/katex/dist/fonts/*.woff2 "$out/katex/fonts/"
# Every browser that runs the page reads woff2: drop the woff and ttf fallbacks from the CSS
# so it names only files that are here.
sed -e 's/,url(fonts\/[A-Za-z0-9_-]*\.woff) format("woff")//g' \
    -e 's/,url(fonts\/[A-Za-z0-9_-]*\.ttf) format("truetype")//g' \
    "$nm/katex/dist/katex.min.css" > "$out/katex/katex.min.css"

cp "$nm/@highlightjs/cdn-assets/highlight.min.js" "$out/highlight/highlight.min.js"
cp "$nm/@highlightjs/cdn-assets/styles/github.min.css" "$out/highlight/github.min.css"
cp "$nm/@highlightjs/cdn-assets/styles/github-dark.min.css" "$out/highlight/github-dark.min.css"
cp "$nm/@highlightjs/cdn-assets/LICENSE" "$out/highlight/LICENSE"

cp "$nm/dompurify/dist/purify.min.js" "$out/dompurify/purify.min.js"
cp "$nm/dompurify/LICENSE" "$out/dompurify/LICENSE"

cat > "$out/VERSIONS" <<VERSIONS
# Written by scripts/vendor-web.sh: change the pins there and run it again.
markdown-it $MARKDOWN_IT
markdown-it-texmath $TEXMATH
katex $KATEX
@highlightjs/cdn-assets $HIGHLIGHT
dompurify $DOMPURIFY
VERSIONS
echo "vendored into $out:"
sed -n '2,$p' "$out/VERSIONS"
