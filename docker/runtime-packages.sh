#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries the given
# executables load (ldd), one per line, sorted. The image's runtime stage
# installs exactly these, so it never drifts from what the build linked.
# Fails if a library is not found or belongs to no package.
set -euo pipefail
(($# > 0)) || { echo "usage: $0 EXECUTABLE..." >&2; exit 2; }

owner() {
  # With merged /usr a library may be registered under /lib or /usr/lib
  # while ldd prints the other; try the path, its real path, and both forms.
  local path=$1 real candidates p
  real=$(readlink -f "$path")
  candidates=("$path" "$real" "/usr${path#/usr}" "${path#/usr}" "/usr${real#/usr}" "${real#/usr}")
  for p in "${candidates[@]}"; do
    if out=$(dpkg-query -S "$p" 2>/dev/null); then
      echo "${out%%:*}"   # "libfoo1:amd64: /path" -> "libfoo1"
      return 0
    fi
  done
  echo "runtime-packages: no package owns $path" >&2
  return 1
}

declare -A packages=()
for exe in "$@"; do
  while read -r line; do
    case $line in
      *"=> not found"*) echo "runtime-packages: $exe: $line" >&2; exit 1 ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;          # the dynamic loader itself
      *) continue ;;                   # linux-vdso.so.1 has no file
    esac
    packages[$(owner "$lib")]=1
  done < <(ldd "$exe")
done
printf '%s\n' "${!packages[@]}" | sort
