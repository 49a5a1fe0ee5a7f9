#!/usr/bin/env bash
# Formats every C++ and CUDA file of the project with clang-format-14 and the
# project's .clang-format (STYLE.md §11). Works from any directory.
#   scripts/format.sh           rewrite the files in place
#   scripts/format.sh --check   change nothing; list the files that need formatting, exit 1 if any
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
format="${CLANG_FORMAT:-clang-format-14}"

mapfile -t files < <(find include test bench examples consumer -type f \
  \( -name '*.hpp' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null | sort)

if [ "${1:-}" != "--check" ]; then
  "$format" -i "${files[@]}"
  echo "format: ${#files[@]} files formatted with $("$format" --version)"
  exit 0
fi

bad=()
for f in "${files[@]}"; do
  "$format" --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
echo "format: ${#files[@]} files checked with $("$format" --version)"
if [ "${#bad[@]}" -gt 0 ]; then
  echo "format: ${#bad[@]} files need formatting (fix: bash scripts/format.sh):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
