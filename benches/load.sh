#!/usr/bin/env bash
# End-to-end benches of mollie-gateway against nginx and the bare upstream, on 127.0.0.1 only.
#
#   benches/load.sh ab      # direct vs nginx vs gateway, interleaved rounds, medians (default)
#   benches/load.sh storm   # refresh storm: N = 1, 100, 1000 requests on one expired token
#   benches/load.sh scale   # 100,000 merchants: start-up time and RSS above an empty store
#   benches/load.sh profile # where the gateway's CPU goes at 64 connections (perf/callgrind;
#                           # STRACE=1: its system calls, strace -c)
#   benches/load.sh replicas # 3 replicas on one Redis vs 3 on file stores, same run: token
#                            # calls per merchant per expiry, proxy CPU µs/request
#
# Knobs (environment): ROUNDS=5 DURATION=10 (s per wrk run) CONNS="64 1" MERCHANTS=1000
# WARMUP=3 LOGS=on|off (access logs of both proxies) DUMMY_KEY=live_… (test_… makes the
# gateway add testmode=true) STORM_N=1,100,1000 TOKEN_DELAY_MS=50 SCALE_MERCHANTS=100000
# SCALE_ROUNDS=3 SCALE_SETTLE=60 (s idle before the settled RSS of `scale`)
# STORM_THREADS=2 (worker threads of the gateway in `storm`; with more than 1 the
# gateway and the upstream may use every CPU, STORM_CPUS="0,1") CLIENTS=on (a [clients] entry for DUMMY_KEY: caller keys checked)
# REPLICAS=3 REPLICA_MERCHANTS=20 REPLICA_LIFETIME=4 (s) REPLICA_CONNS=48 KEEP=1 (keep the work directory) GATEWAY_ENV="K=V …" (extra environment of
# the gateway process, e.g. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 to try an allocator).
# BASELINE=/path/to/another/mollie-gateway (ab, storm): that build runs too, as target `baseline`,
# interleaved with the others, so a change is measured against its predecessor in one run.
# Several: BASELINE="name1=/path/one name2=/path/two" (targets name1, name2; ratios to each).
# wrk runs on CPU 0; the upstream and the proxy under test share CPU 1 (WRK_CPU, SERVER_CPU).
# Needs nginx and wrk (installed from Debian with apt-get when missing), curl and cargo;
# `replicas` needs redis-server (scripts/setup --test installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-ab}
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-10} CONNS=${CONNS:-"64 1"} WARMUP=${WARMUP:-3}
MERCHANTS=${MERCHANTS:-1000} LOGS=${LOGS:-on} TOKEN_DELAY_MS=${TOKEN_DELAY_MS:-50}
STORM_N=${STORM_N:-1,100,1000} SCALE_MERCHANTS=${SCALE_MERCHANTS:-100000} SCALE_ROUNDS=${SCALE_ROUNDS:-3}
SCALE_SETTLE=${SCALE_SETTLE:-60}
WRK_CPU=${WRK_CPU:-0} SERVER_CPU=${SERVER_CPU:-1}
[ "$(nproc)" -ge 2 ] || { WRK_CPU=0 SERVER_CPU=0; }
export TOKEN_SUFFIX=gatewaybench0123456789 DUMMY_KEY=${DUMMY_KEY:-live_gatewaygatewaygatewaygatewayga}
TICK=$(getconf CLK_TCK)

need() { command -v "$1" >/dev/null; }
if ! need nginx || ! need wrk; then
  echo "installing nginx and wrk (Debian packages)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light wrk >&2
fi
need curl && need taskset || { echo "needs curl and taskset" >&2; exit 1; }
cargo build --release --quiet --bin mollie-gateway --example bench_upstream --example bench_storm
BIN=$ROOT/target/release/mollie-gateway KIT=$ROOT/target/release/examples/bench_upstream
STORM=$ROOT/target/release/examples/bench_storm

WORK=$(mktemp -d /tmp/mg-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# A port nothing listens on (bounded tries).
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768-)
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  echo "no free port" >&2; exit 1
}

# Waits (at most 20 s) until `GET $2` on port $1 answers 200.
wait_http() {
  for _ in $(seq 1 4000); do
    if { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then
      printf 'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' "$2" >&3
      local line=""; read -r -t 2 line <&3 || true; exec 3<&- 3>&-
      [[ $line == "HTTP/1.1 200"* ]] && return 0
    fi
    sleep 0.005
  done
  echo "port $1 not ready" >&2; return 1
}

# utime+stime (ticks) of the given PIDs, summed.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done
  echo "$t"
}
# utime (ticks) alone.
user_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12}'))); done
  echo "$t"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Starts bench_upstream (API + token endpoint); sets UP, TOK, UP_PID.
start_upstream() {
  rm -f "$WORK/upstream.ports"
  taskset -c "$SERVER_CPU" "$KIT" serve --api 127.0.0.1:0 --tokens 127.0.0.1:0 \
    --suffix "$TOKEN_SUFFIX" --token-delay-ms "${1:-0}" --short-lifetime-secs "${2:-2}" \
    --ports-file "$WORK/upstream.ports" &
  UP_PID=$!; PIDS+=("$UP_PID")
  for _ in $(seq 1 500); do [ -s "$WORK/upstream.ports" ] && break; sleep 0.01; done
  read -r UP TOK <"$WORK/upstream.ports"
  wait_http "$TOK" /_stats
}
upstream_stat() { curl -s "127.0.0.1:$TOK/_stats" | sed "s/.*\"$1\":\([0-9]*\).*/\1/"; }

# Writes a gateway config in $1 for a store at $1/credentials.json; sets GW, GWA.
gateway_config() {
  GW=$(free_port) GWA=$(free_port)
  local level=info; [ "$LOGS" = on ] || level=warn
  cat >"$1/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$GWA"
threads = 1
upgrade_sock = "$1/upgrade.sock"
pid_file = "$1/gateway.pid"
[upstream]
base_url = "http://127.0.0.1:$UP"
token_url = "http://127.0.0.1:$TOK/oauth2/tokens"
[oauth]
client_id = "app_bench"
client_secret = "bench_secret"
background_refresh = ${BACKGROUND_REFRESH:-true}
[store]
path = "$1/credentials.json"
[log]
level = "$level"
EOF
  if [ "${CLIENTS:-off}" = on ]; then
    # The wrk script sends DUMMY_KEY as its Bearer: a known client for every merchant.
    printf '[clients.bench]\nkey_sha256 = ["%s"]\nmerchants = ["*"]\n' \
      "$(printf %s "$DUMMY_KEY" | sha256sum | cut -d' ' -f1)" >>"$1/gateway.toml"
  fi
}

# Starts the gateway of directory $1 (pinned, GW_THREADS worker threads, default 1; binary $2,
# default $BIN); sets GW_PID.
start_gateway() {
  env MOLLIE_GATEWAY__SERVER__THREADS="${GW_THREADS:-1}" ${GATEWAY_ENV:-} taskset -c "${GW_CPUS:-$SERVER_CPU}" "${2:-$BIN}" \
    --config "$1/gateway.toml" run 2>>"$1/gateway.log" &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_http "$GWA" /readyz
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Starts nginx (1 worker, map over the merchants, upstream keepalive); sets NG, NG_PIDS.
start_nginx() {
  local d=$WORK/nginx; mkdir -p "$d"
  NG=$(free_port)
  "$KIT" nginx-map --merchants "$MERCHANTS" --suffix "$TOKEN_SUFFIX" >"$d/merchants.map"
  local access="access_log $d/access.log;"; [ "$LOGS" = on ] || access="access_log off;"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  $access
  client_body_temp_path $d/body; proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fcgi; uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  map_hash_bucket_size 128;
  map \$http_x_merchant_id \$mollie_token {
    default "";
    include $d/merchants.map;
  }
  upstream mollie { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://mollie;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization \$mollie_token;
      proxy_set_header X-Merchant-Id "";
    }
  }
}
EOF
  taskset -c "$SERVER_CPU" nginx -p "$d" -c "$d/nginx.conf" &
  local master=$!; PIDS+=("$master")
  for _ in $(seq 1 400); do pgrep -P "$master" >/dev/null && break; sleep 0.01; done
  NG_PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# One wrk run: target name, connections, port, mode, PIDs of the proxy → a results row.
run_wrk() {
  local target=$1 conns=$2 port=$3 mode=$4; shift 4
  local before up_before out after up_after user_before user_after
  before=$(cpu_ticks "$@"); up_before=$(cpu_ticks "$UP_PID"); user_before=$(user_ticks "$@")
  out=$(MODE=$mode MERCHANTS=$MERCHANTS taskset -c "$WRK_CPU" \
    wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s -s benches/rotate.lua "http://127.0.0.1:$port" | grep '^RESULT')
  after=$(cpu_ticks "$@"); up_after=$(cpu_ticks "$UP_PID"); user_after=$(user_ticks "$@")
  local kv; kv=$(echo "$out" | cut -d' ' -f2-)
  local requests rps p50 p99 p999 non2xx errors
  eval "$(echo "$kv" | tr ' ' '\n' | grep -E '^(requests|rps|p50|p99|p999|non2xx|errors)=')"
  awk -v t="$target" -v c="$conns" -v r="$rps" -v a="$p50" -v b="$p99" -v d="$p999" -v n="$non2xx" \
      -v e="$errors" -v q="$requests" -v cpu=$((after - before)) -v up=$((up_after - up_before)) -v tick="$TICK" \
      -v user=$((user_after - user_before)) \
    'BEGIN {printf "%s\t%s\t%.0f\t%d\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.2f\n", t, c, r, a, b, d, n, e,
            cpu * 1e6 / tick / q, up * 1e6 / tick / q, user * 1e6 / tick / q, (cpu - user) * 1e6 / tick / q}'
}

ab() {
  start_upstream 0
  mkdir -p "$WORK/gw"
  gateway_config "$WORK/gw"
  "$KIT" store --merchants "$MERCHANTS" --out "$WORK/gw/credentials.json"
  start_gateway "$WORK/gw"
  TARGETS="direct nginx gateway" BASES=""
  declare -gA BASE_PORT BASE_PID
  local entry name path gw=$GW gwa=$GWA gw_pid=$GW_PID
  for entry in ${BASELINE:-}; do
    case $entry in *=*) name=${entry%%=*} path=${entry#*=} ;; *) name=baseline path=$entry ;; esac
    mkdir -p "$WORK/base-$name"
    gateway_config "$WORK/base-$name"
    cp "$WORK/gw/credentials.json" "$WORK/base-$name/credentials.json"
    start_gateway "$WORK/base-$name" "$path"
    BASE_PORT[$name]=$GW BASE_PID[$name]=$GW_PID
    BASES="$BASES $name"
  done
  GW=$gw GWA=$gwa GW_PID=$gw_pid
  [ -z "$BASES" ] || TARGETS="direct nginx$BASES gateway"
  start_nginx
  local dur=$DURATION; DURATION=$WARMUP
  for t in $TARGETS; do warm_row=$(one "$t" 64); done
  DURATION=$dur
  echo "warm-up done (token endpoint calls: $(upstream_stat token_calls))" >&2
  local rows=$WORK/rows.tsv order
  for r in $(seq 1 "$ROUNDS"); do
    order=$TARGETS
    [ $((r % 2)) = 1 ] || order=$(echo "$TARGETS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for c in $CONNS; do
      for t in $order; do one "$t" "$c" | tee -a "$rows" >&2; done
    done
  done
  summarize "$rows"
  echo
  echo "upstream answers: $(upstream_stat api_ok) × 200, $(upstream_stat api_401) × 401; token endpoint calls: $(upstream_stat token_calls)"
}

one() {
  case $1 in
    direct) run_wrk direct "$2" "$UP" direct "$UP_PID" ;;
    nginx) run_wrk nginx "$2" "$NG" proxy $NG_PIDS ;;
    gateway) run_wrk gateway "$2" "$GW" proxy "$GW_PID" ;;
    *) run_wrk "$1" "$2" "${BASE_PORT[$1]}" proxy "${BASE_PID[$1]}" ;;
  esac
}

# Medians per target and connection count, then the ratios the issue asks for.
summarize() {
  local rows=$1
  med() { awk -F'\t' -v t="$1" -v c="$2" -v k="$3" '$1 == t && $2 == c {print $k}' "$rows" | median; }
  echo "Medians of $ROUNDS interleaved rounds, ${DURATION}s each, $MERCHANTS merchants, access logs $LOGS:"
  echo
  echo "| target | conns | req/s | p50 µs | p99 µs | p99.9 µs | non-2xx | errors | proxy CPU µs/req | user | system | upstream CPU µs/req |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for c in $CONNS; do
    for t in $TARGETS; do
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$c" \
        "$(med $t $c 3)" "$(med $t $c 4)" "$(med $t $c 5)" "$(med $t $c 6)" "$(med $t $c 7)" \
        "$(med $t $c 8)" "$( [ $t = direct ] && echo "—" || med $t $c 9)" \
        "$(med $t $c 11)" "$(med $t $c 12)" "$(med $t $c 10)"
    done
  done
  echo
  for c in $CONNS; do
    awk -v c="$c" -v gr="$(med gateway $c 3)" -v nr="$(med nginx $c 3)" -v dr="$(med direct $c 3)" \
        -v gc="$(med gateway $c 9)" -v nc="$(med nginx $c 9)" \
        -v gp="$(med gateway $c 4)" -v np="$(med nginx $c 4)" -v dp="$(med direct $c 4)" \
      'BEGIN {printf "%s conns: gateway/nginx req/s %.2f×, CPU µs/req %.2f×; gateway/direct req/s %.2f×; p50 added over direct: gateway %d µs, nginx %d µs\n",
              c, gr / nr, gc / nc, gr / dr, gp - dp, np - dp}'
    for b in $BASES; do
      awk -v c="$c" -v b="$b" -v gc="$(med gateway $c 9)" -v bc="$(med $b $c 9)" -v nc="$(med nginx $c 9)" \
          -v gr="$(med gateway $c 3)" -v br="$(med $b $c 3)" \
        'BEGIN {printf "%s conns: gateway/%s CPU µs/req %.2f×, req/s %.2f×; %s/nginx CPU µs/req %.2f×\n",
                c, b, gc / bc, gr / br, b, bc / nc}'
    done
  done
}

storm() {
  local threads=${STORM_THREADS:-2} cpus=$SERVER_CPU
  [ "$threads" -gt 1 ] && cpus=${STORM_CPUS:-0-$(( $(nproc) - 1 ))}
  SERVER_CPU=$cpus start_upstream "$TOKEN_DELAY_MS"
  echo "Refresh storm: token endpoint latency ${TOKEN_DELAY_MS} ms, storm token lifetime 2 s (usable 1.5 s), gateway $threads thread(s) on CPUs $cpus, client on CPU $WRK_CPU:"
  # The build under test, then each BASELINE build, one after the other on the same upstream.
  local entry name path
  for entry in "gateway=$BIN" ${BASELINE:-}; do
    case $entry in *=*) name=${entry%%=*} path=${entry#*=} ;; *) name=baseline path=$entry ;; esac
    mkdir -p "$WORK/storm-$name"
    BACKGROUND_REFRESH=false gateway_config "$WORK/storm-$name"
    "$KIT" store --merchants 0 --storm 1 --out "$WORK/storm-$name/credentials.json"
    GW_THREADS=$threads GW_CPUS=$cpus start_gateway "$WORK/storm-$name" "$path"
    echo
    echo "$name ($path):"
    echo
    taskset -c "$WRK_CPU" "$STORM" --gateway "127.0.0.1:$GW" --stats "127.0.0.1:$TOK" --n "$STORM_N"
    stop "$GW_PID"
  done
}

# Starts a gateway on the store in $1; sets STARTUP_MS (spawn → /readyz 200) and RSS.
timed_start() {
  local t0 t1; t0=$(date +%s%N)
  start_gateway "$1"
  t1=$(date +%s%N)
  STARTUP_MS=$(( (t1 - t0) / 1000000 )) RSS=$(rss_kib "$GW_PID")
}

scale() {
  start_upstream 0
  mkdir -p "$WORK/empty" "$WORK/big"
  "$KIT" store --merchants 0 --storm 0 --out "$WORK/empty/credentials.json"
  "$KIT" store --merchants "$SCALE_MERCHANTS" --storm 0 --out "$WORK/big/credentials.json"
  local se=() re=() sb=() rb=()
  for _ in $(seq 1 "$SCALE_ROUNDS"); do
    for d in empty big; do
      gateway_config "$WORK/$d"
      timed_start "$WORK/$d"
      if [ $d = empty ]; then se+=("$STARTUP_MS"); re+=("$RSS"); else sb+=("$STARTUP_MS"); rb+=("$RSS"); fi
      stop "$GW_PID"
    done
  done
  # Once more with every token cached: one request per merchant (wrk, bounded).
  gateway_config "$WORK/big"
  start_gateway "$WORK/big"
  local calls0 fetched; calls0=$(upstream_stat token_calls)
  for _ in $(seq 1 10); do
    fetched=$(( $(upstream_stat token_calls) - calls0 ))
    [ "$fetched" -ge "$SCALE_MERCHANTS" ] && break
    START=$fetched MODE=proxy MERCHANTS=$SCALE_MERCHANTS taskset -c "$WRK_CPU" \
      wrk -t1 -c64 -d10s --timeout 5s -s benches/rotate.lua "http://127.0.0.1:$GW" >/dev/null
  done
  local warmed; warmed=$(rss_kib "$GW_PID")
  # The settled figure: the burst grew tokio's blocking pool (every refresh reads the file
  # store), and its threads exit after 10 s idle, their allocator pages with them.
  sleep "$SCALE_SETTLE"
  local settled; settled=$(rss_kib "$GW_PID")
  local e b eb; e=$(printf '%s\n' "${re[@]}" | median); b=$(printf '%s\n' "${rb[@]}" | median)
  echo "Scale: $SCALE_MERCHANTS merchants in the file store ($(du -k "$WORK/big/credentials.json" | cut -f1) KiB), medians of $SCALE_ROUNDS starts:"
  echo
  echo "| store | start-up ms (spawn → /readyz 200) | RSS MiB after start | RSS above empty MiB |"
  echo "|---|---|---|---|"
  awk -v s="$(printf '%s\n' "${se[@]}" | median)" -v r="$e" 'BEGIN {printf "| empty | %d | %.1f | — |\n", s, r / 1024}'
  awk -v s="$(printf '%s\n' "${sb[@]}" | median)" -v r="$b" -v e="$e" \
    'BEGIN {printf "| %s merchants | %d | %.1f | %.1f |\n", ENVIRON["SCALE_MERCHANTS"], s, r / 1024, (r - e) / 1024}'
  eb=$(( $(upstream_stat token_calls) - calls0 ))
  awk -v r="$warmed" -v e="$e" -v n="$eb" \
    'BEGIN {printf "| same, right after %d token fetches (every token cached) | — | %.1f | %.1f |\n", n, r / 1024, (r - e) / 1024}'
  awk -v r="$settled" -v e="$e" -v t="$SCALE_SETTLE" \
    'BEGIN {printf "| same, %d s idle later (settled) | — | %.1f | %.1f |\n", t, r / 1024, (r - e) / 1024}'
}

# Where the gateway's CPU goes at 64 connections: perf (cpu-clock samples with DWARF call
# graphs) when it works here, else valgrind's callgrind over a shorter run.
profile() {
  start_upstream 0
  mkdir -p "$WORK/gw"
  gateway_config "$WORK/gw"
  "$KIT" store --merchants "$MERCHANTS" --out "$WORK/gw/credentials.json"
  start_gateway "$WORK/gw"
  DURATION=$WARMUP one gateway 64 >/dev/null
  local out=${PROFILE_OUT:-$WORK}
  if [ -n "${STRACE:-}" ]; then
    # System calls instead of samples: `strace -c` over the run, and wrk's request count.
    DURATION=$DURATION one gateway 64 >"$WORK/row" &
    local w=$!
    sleep 1
    timeout -s INT $((DURATION - 2)) strace -c -f -p "$GW_PID" -o "$out/strace.txt" 2>/dev/null || true
    wait $w
    cat "$WORK/row"
    echo "system calls over $((DURATION - 2)) s of the run (strace slows the gateway; see the calls per request):"
    head -25 "$out/strace.txt"
    return
  fi
  if perf record -q -e cpu-clock -o "$WORK/probe.data" true 2>/dev/null; then
    DURATION=$DURATION one gateway 64 >"$WORK/row" &
    local w=$!
    sleep 1
    perf record -q -F 1999 -e cpu-clock --call-graph dwarf,32768 -p "$GW_PID" -o "$out/perf.data" -- sleep $((DURATION - 2)) 2>/dev/null
    wait $w
    cat "$WORK/row"
    echo
    echo "Where the gateway's CPU goes (share of cpu-clock samples, by call stack):"
    echo
    perf script -i "$out/perf.data" 2>/dev/null | awk '
      BEGIN { RS = "" }
      {
        n++; split($0, f, "\n"); leaf = f[2]
        if ($0 ~ /Gateway::log/) k = "access log line + metrics (`Gateway::log`, its write included)"
        else if (leaf ~ /kernel/) k = "kernel (syscalls, loopback TCP, scheduling)"
        else if (leaf ~ /malloc|free|_int_|realloc|unlink_chunk|consolidate|rdl_alloc|mi_|_mi_/) k = "allocator (mimalloc)"
        else if (leaf ~ /mollie_gateway::|MerchantId|TokenManager/) k = "the gateway'"'"'s own code (merchant check, token lookup, rewrites)"
        else k = "pingora-core + tokio + http, user space"
        c[k]++
      }
      END { for (k in c) printf "| %s | %.1f%% |\n", k, 100 * c[k] / n }' | sort -t'|' -k3 -rn
    echo
    perf report -i "$out/perf.data" --no-children --sort symbol --percent-limit 1 --stdio -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | cut -c1-120 | head -25
    echo "(call graphs: perf report -i $out/perf.data --children)"
  else
    echo "perf unusable here: callgrind (slow; a 64-connection wrk run of ${DURATION}s)" >&2
    stop "$GW_PID"
    MOLLIE_GATEWAY__SERVER__THREADS=1 taskset -c "$SERVER_CPU" valgrind --tool=callgrind \
      --callgrind-out-file="$out/callgrind.out" "$BIN" --config "$WORK/gw/gateway.toml" run 2>>"$WORK/gw/gateway.log" &
    GW_PID=$!; PIDS+=("$GW_PID")
    wait_http "$GWA" /readyz
    one gateway 64
    stop "$GW_PID"
    callgrind_annotate "$out/callgrind.out" | head -60
  fi
}

# Several replicas: $REPLICAS gateways on one Redis and as many on their own file stores (a
# copy each), all running; the same load on each set in turn (interleaved rounds). The
# $REPLICA_MERCHANTS merchants are the upstream's short-lived ones (s000001…, tokens live
# $REPLICA_LIFETIME s), background refresh off: every token is replaced on the request path
# half a lifetime after it was issued, by whichever replica meets it first.
replicas() {
  need redis-server || { echo "needs redis-server: scripts/setup --test" >&2; exit 1; }
  local k=$REPLICA_MERCHANTS life=$REPLICA_LIFETIME
  start_upstream 0 "$life"
  taskset -c "$SERVER_CPU" redis-server --port 0 --save "" --appendonly no \
    --unixsocket "$WORK/redis.sock" --unixsocketperm 700 >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  for _ in $(seq 1 500); do [ -S "$WORK/redis.sock" ] && break; sleep 0.01; done
  local redis_env="MOLLIE_GATEWAY__STORE__BACKEND=redis MOLLIE_GATEWAY__STORE__REDIS_URL=redis+unix://$WORK/redis.sock"
  local backend i d
  for backend in redis file; do
    eval "${backend}_PORTS='' ${backend}_PIDS=''"
    for i in $(seq 1 "$REPLICAS"); do
      d=$WORK/$backend-$i; mkdir -p "$d"
      BACKGROUND_REFRESH=false gateway_config "$d"
      local env=""
      if [ $backend = redis ]; then
        env="$redis_env MOLLIE_GATEWAY__STORE__FALLBACK_PATH=$d/fallback.json"
        if [ "$i" = 1 ]; then  # onboard once, through the CLI, as an operator would
          for m in $(seq 1 "$k"); do
            m=$(printf 's%06d' "$m")
            env $env "$BIN" --config "$d/gateway.toml" merchants add "$m" --refresh-token "refresh_$m" >/dev/null
          done
        fi
      else
        "$KIT" store --merchants 0 --storm "$k" --out "$d/credentials.json"
      fi
      GATEWAY_ENV="${GATEWAY_ENV:-} $env" start_gateway "$d"
      eval "${backend}_PORTS=\"\$${backend}_PORTS $GW\" ${backend}_PIDS=\"\$${backend}_PIDS $GW_PID\""
    done
  done
  local gap=$((life * 250)) dur=$DURATION rows=$WORK/rows.tsv
  DURATION=$WARMUP
  for backend in redis file; do spread $backend >/dev/null; done
  DURATION=$dur
  curl -s "127.0.0.1:$TOK/_expiries" >/dev/null  # the warm-up's calls
  for r in $(seq 1 "$ROUNDS"); do
    local order="redis file"; [ $((r % 2)) = 1 ] || order="file redis"
    for backend in $order; do spread $backend | tee -a "$rows" >&2; done
  done
  med() { awk -F'\t' -v t="$1" -v k="$2" '$1 == t {print $k}' "$rows" | median; }
  sum() { awk -F'\t' -v t="$1" -v k="$2" '$1 == t {s += $k} END {print s + 0}' "$rows"; }
  echo "$REPLICAS replicas per backend, $k merchants (tokens live ${life} s, background refresh off),"
  echo "$REPLICA_CONNS connections spread evenly (one wrk per replica, all at once), medians of $ROUNDS"
  echo "interleaved rounds of ${DURATION} s; an expiry = a merchant's token calls less than ${gap} ms apart:"
  echo
  echo "| backend | req/s | worst replica's p99 µs | non-2xx | errors | proxy CPU µs/req (all replicas) | Redis CPU µs/req | token calls | expiries | token calls per merchant per expiry | most calls for one expiry |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for backend in redis file; do
    local calls exp
    calls=$(sum $backend 8) exp=$(sum $backend 9)
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$backend" \
      "$(med $backend 2)" "$(med $backend 3)" "$(sum $backend 4)" "$(sum $backend 5)" \
      "$(med $backend 6)" "$( [ $backend = redis ] && med $backend 7 || echo "—")" "$calls" "$exp" \
      "$(awk -v c="$calls" -v e="$exp" 'BEGIN {printf "%.2f", e ? c / e : 0}')" \
      "$(awk -F'\t' -v t="$backend" '$1 == t && $10 > m {m = $10} END {print m + 0}' "$rows")"
  done
  echo
  awk -v r="$(med redis 6)" -v f="$(med file 6)" \
    'BEGIN {printf "proxy CPU µs/req, redis/file: %.2f×\n", r / f}'
  echo "upstream answers: $(upstream_stat api_ok) × 200, $(upstream_stat api_401) × 401"
}

# One run of the replicas of backend $1: one wrk per replica at once ($REPLICA_CONNS spread
# evenly), then a results row: backend, req/s, worst p99, non-2xx, errors, proxy CPU µs/req,
# Redis CPU µs/req, token calls, expiries, most calls for one expiry.
spread() {
  local backend=$1 ports pids p w=() before after rb ra
  eval "ports=\$${backend}_PORTS pids=\$${backend}_PIDS"
  local per=$(( REPLICA_CONNS / REPLICAS )); [ "$per" -ge 1 ] || per=1
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids); rb=$(cpu_ticks "$REDIS_PID")
  for p in $ports; do
    MODE=proxy PREFIX=s MERCHANTS=$REPLICA_MERCHANTS taskset -c "$WRK_CPU" \
      wrk -t1 -c"$per" -d"${DURATION}s" --timeout 5s -s benches/rotate.lua "http://127.0.0.1:$p" \
      | grep '^RESULT' >"$WORK/wrk-$p" &
    w+=($!)
  done
  wait "${w[@]}"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids); ra=$(cpu_ticks "$REDIS_PID")
  local exp; exp=$(curl -s "127.0.0.1:$TOK/_expiries?gap_ms=$((REPLICA_LIFETIME * 250))")
  for p in $ports; do cat "$WORK/wrk-$p"; done | tr ' ' '\n' | awk -F= -v b="$backend" \
      -v cpu=$((after - before)) -v redis=$((ra - rb)) -v tick="$TICK" -v ex="$exp" '
    $1 == "requests" {q += $2} $1 == "rps" {r += $2} $1 == "p99" && $2 > p {p = $2}
    $1 == "non2xx" {n += $2} $1 == "errors" {e += $2}
    END {
      nf = split(ex, f, /[{}:,"]+/)
      for (i = 1; i < nf; i++) v[f[i]] = f[i + 1]
      printf "%s\t%.0f\t%d\t%d\t%d\t%.2f\t%.2f\t%d\t%d\t%d\n", b, r, p, n, e,
        cpu * 1e6 / tick / q, redis * 1e6 / tick / q, v["calls"], v["expiries"], v["max_calls_per_expiry"]
    }'
}

case $MODE in
  ab) ab ;;
  profile) profile ;;
  storm) storm ;;
  scale) export SCALE_MERCHANTS; scale ;;
  replicas)
    REPLICAS=${REPLICAS:-3} REPLICA_MERCHANTS=${REPLICA_MERCHANTS:-20}
    REPLICA_LIFETIME=${REPLICA_LIFETIME:-4} REPLICA_CONNS=${REPLICA_CONNS:-48}
    replicas ;;
  *) echo "usage: $0 [ab|storm|scale|profile|replicas]" >&2; exit 2 ;;
esac
