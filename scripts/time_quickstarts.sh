#!/usr/bin/env bash
# Time the branched and the old quickstart back to back (BENCHMARKS.md, "Quickstart in branch
# form"): fresh results and compilation caches under OUT, the 1-min load sampled every 15 s.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/jaxscale-quickstart-timing}
rm -rf "$out" && mkdir -p "$out"
(while true; do cut -d' ' -f1 /proc/loadavg >> "$out/load.txt"; sleep 15; done) &
sampler=$!
for which in branched old; do
  if [ "$which" = branched ]; then
    args=(experiments/quickstart_branched.py --fit-draws 4000 --fit-warmup 2000)
  else
    args=(experiments/quickstart.py)
  fi
  echo "== $which start $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> "$out/summary.txt"
  JAXSCALE_CACHE="$out/cache-$which" /usr/bin/time -f "$which: %e s wall, %U s user, %S s sys" \
    .venv/bin/jaxscale study "${args[@]}" --results "$out/res-$which" --no-progress \
    > "$out/$which.log" 2>> "$out/summary.txt"
  echo "$which exit $?" >> "$out/summary.txt"
done
kill "$sampler"
echo "load samples: $(tr '\n' ' ' < "$out/load.txt")" >> "$out/summary.txt"
cat "$out/summary.txt"
