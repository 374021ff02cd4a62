#!/usr/bin/env bash
# Installs what davit needs, builds it, starts `davit dev`, runs the example jobs and shows the service
# catalog, proxy and DNS at work.
# Ctrl-C stops davit and every task it started, and the registry if the demo started it.
set -euo pipefail
cd "$(dirname "$0")/.."

# davit dev's own log goes to a file, not between the demo's lines.
dev_log=target/demo-dev.log
mkdir -p target
echo "==> davit dev will log to $dev_log (follow it with: tail -f $dev_log)"

# Whatever the demo starts is stopped when it ends, however it ends: Ctrl-C, a failed step, or the end.
registry_pid=""
dev_pid=""
stop_what_we_started() {
  trap '' INT TERM # a second Ctrl-C does not cut this short
  if [ -n "$dev_pid" ]; then
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
}
trap stop_what_we_started EXIT
trap 'exit 130' INT TERM

source scripts/deps.sh

cargo build --release --locked -p davit
davit=target/release/davit
export DAVIT_ADDR=http://127.0.0.1:7646

# The vm example boots the small guest built from Debian's kernel and busybox; the container example pulls a
# busybox image from a registry on 127.0.0.1:5000, started here with the images scripts/test-images.sh builds.
DAVIT_GUEST_DIR=/var/lib/davit/guest scripts/build-guest.sh
scripts/test-images.sh
registry_dir=target/demo-registry
mkdir -p "$registry_dir"
cat > "$registry_dir/config.yml" <<YAML
version: 0.1
storage: {filesystem: {rootdirectory: $PWD/$registry_dir/data}}
http: {addr: 127.0.0.1:5000}
YAML
if ! curl -fs http://127.0.0.1:5000/v2/ >/dev/null; then
  docker-registry serve "$registry_dir/config.yml" >"$registry_dir/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:5000/v2/ >/dev/null && break; sleep 0.1; done
fi
skopeo --insecure-policy copy -q --dest-tls-verify=false oci:target/test-images/busybox:1 docker://127.0.0.1:5000/busybox:1

"$davit" dev --bind 127.0.0.1:7646 >"$dev_log" 2>&1 &
dev_pid=$!
# It says so once its node is ready.
until grep -q '^davit dev is running' "$dev_log"; do
  kill -0 "$dev_pid" 2>/dev/null || { echo "davit dev did not start:"; cat "$dev_log"; exit 1; }
  sleep 0.1
done

for job in examples/*.yaml; do
  echo; echo "\$ davit job run $job"
  "$davit" job run "$job"
done
# Service discovery (examples/web-service.yaml): the proxy on 127.0.0.1:9080 and DNS on 127.0.0.1:8600.
for _ in $(seq 1 100); do [[ "$("$davit" service ls)" == *' 3/3 '* ]] && break; sleep 0.1; done
echo; echo "\$ davit service ls"; "$davit" service ls
echo; echo "\$ curl -s 127.0.0.1:9080/   # three times: round robin over the healthy instances"
for _ in 1 2 3; do curl -s 127.0.0.1:9080/; done
echo; echo "\$ dig @127.0.0.1 -p 8600 web.service.davit SRV +short"; dig @127.0.0.1 -p 8600 web.service.davit SRV +short
echo; echo "\$ davit service info web"; "$davit" service info web
echo; echo "\$ davit job plan hello.yaml   # a dry run of scaling web from 3 to 5: what would change, nothing stored"
sed 's/count: 3/count: 5/' examples/hello.yaml >"$registry_dir/hello.yaml"
"$davit" job plan "$registry_dir/hello.yaml"
# A namespace with a quota: two counters fit in 96 MiB, the fourth copy waits for room (exit 1 from job scale).
echo; echo "\$ davit namespace apply team-a --memory 96 --max-count 5"; "$davit" namespace apply team-a --memory 96 --max-count 5
echo; echo "\$ davit job run examples/team-a/counter.yaml"; "$davit" job run examples/team-a/counter.yaml
echo; echo "\$ davit job scale -n team-a counter count 4"; "$davit" job scale -n team-a counter count 4 || true
echo; echo "\$ davit namespace status team-a"; "$davit" namespace status team-a
# A variable, encrypted at rest, rendered into a task by a template.
echo; echo "\$ davit var put demo/greeting message='hello from a variable'"; "$davit" var put demo/greeting message='hello from a variable'
echo; echo "\$ davit job run examples/variables/greeter.yaml"; "$davit" job run examples/variables/greeter.yaml
echo; echo "\$ davit job run examples/rollout/shop.yaml   # 2 web servers behind the proxy on 127.0.0.1:9090"
"$davit" job run examples/rollout/shop.yaml
# Steady traffic through the proxy while new versions roll (for the canary analysis); bounded in count and time.
( for _ in $(seq 1 6000); do curl -s -o /dev/null -w '%{http_code}\n' --max-time 2 127.0.0.1:9090/cgi-bin/hello || true; sleep 0.01; done >"$registry_dir/shop-traffic.txt" ) &
traffic_pid=$!
sed 's/hello v1/hello v2/' examples/rollout/shop.yaml >"$registry_dir/shop-v2.yaml"
echo; echo "\$ davit job run shop-v2.yaml   # a new version: a canary gets a quarter of the requests, is judged, promoted, rolled"
"$davit" job run "$registry_dir/shop-v2.yaml"
echo; echo "\$ davit deployment status <id>"; "$davit" deployment status "$("$davit" deployment ls -o json | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)"
sed 's/FAIL_ONE_IN: "0"/FAIL_ONE_IN: "4"/' "$registry_dir/shop-v2.yaml" >"$registry_dir/shop-v3.yaml"
echo; echo "\$ davit job run shop-v3.yaml   # a broken version: its canary answers 500 to a request in four"
"$davit" job run "$registry_dir/shop-v3.yaml" || echo "(exit status $?: the deployment failed and the job went back to version 1)"
kill "$traffic_pid" 2>/dev/null || true; wait "$traffic_pid" 2>/dev/null || true
echo; echo "\$ davit deployment ls"; "$davit" deployment ls
echo; echo "\$ davit job history shop"; "$davit" job history shop
echo "HTTP answers seen by the traffic through the proxy during both rollouts (the proxy retried the canary's 500s):"
sort "$registry_dir/shop-traffic.txt" | uniq -c
# The autoscaler: a CPU-bound service scales up under generated load and back down once it stops.
echo; echo "\$ davit job run examples/autoscale/burn.yaml   # scaled on CPU (50 % of 30 millicores), 1 to 3 instances"
"$davit" job run examples/autoscale/burn.yaml
echo "(generating load: 4 clients through the proxy on 127.0.0.1:9091, at most 60 s)"
load_pids=()
for _ in 1 2 3 4; do
  ( end=$((SECONDS + 60)); while [ $SECONDS -lt $end ]; do curl -s -o /dev/null --max-time 5 127.0.0.1:9091/cgi-bin/burn || true; done ) &
  load_pids+=($!)
done
for _ in $(seq 1 60); do [[ "$("$davit" scaling status burn -o json)" == *'"count": 3'* ]] && break; sleep 1; done
echo; echo "\$ davit scaling status burn"; "$davit" scaling status burn
kill "${load_pids[@]}" 2>/dev/null || true; wait "${load_pids[@]}" 2>/dev/null || true
echo "(load stopped; the 20 s scale-down window passes)"
for _ in $(seq 1 90); do [[ "$("$davit" job history burn)" == *'→ 1'* ]] && break; sleep 1; done
echo; echo "\$ davit job history burn"; "$davit" job history burn
echo; echo "\$ davit node ls"; "$davit" node ls
echo; echo "\$ davit job status"; "$davit" job status
echo
echo "davit dev is running at $DAVIT_ADDR (its log: $dev_log). Try: $davit job status hello; $davit alloc logs -f <alloc-id>"
echo "Press Ctrl-C to stop."
wait "$dev_pid"
