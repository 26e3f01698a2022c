#!/usr/bin/env bash
# Soak of mollie-gateway under injected faults (issue 13), on 127.0.0.1 only, bounded in time.
#
#   benches/soak.sh              # 10 minutes
#   SOAK_S=60 benches/soak.sh    # smoke run: one cycle of the fault schedule
#
# A real gateway process in front of the test suite's fake Mollie (examples/soak.rs, which
# includes tests/support/fake_mollie.rs): 50 merchants on 2-second tokens (refresh tokens
# rotating with ROTATE=1), ~100 requests/s of mixed GET/POST over 32 connections, the token
# endpoint answering 500 (12-17 s of every minute), hanging past oauth.token_timeout_ms (27-32 s) and answering
# slowly (42-50 s), one merchant's refresh token dead (invalid_grant), an upstream 401 injected
# every 2 s. Checks and figures: OUT/report.txt; one row per second: OUT/samples.csv; plot of
# RSS, req/s, errors, fds and threads over time: OUT/soak.png. Exit status 1 when a check fails.
#
# Knobs (environment): SOAK_S=600 (at least 60) RATE=100 (req/s) CONNS=32 SLOW_MS=400 (the
# slow answers; above oauth.token_timeout_ms = 1000 they are an outage no caller may notice,
# so the soak fails: a check of the checks)
# ROTATE=1: refresh tokens rotate, so every refresh (25/s) is an fsync'd store write under one
# lock; the writes queued on it, each holding a blocking thread, then follow the disk's latency,
# and threads and RSS with them (the flatness checks may fail on a busy disk without any leak)
# OUT=target/soak/<UTC time> PROFILE=debug|release (the build the gateway runs; debug is the one
# `cargo test` already built). Needs gnuplot (gnuplot-nox from Debian, installed when missing;
# NO_PLOT=1 skips the plot).
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_S=${SOAK_S:-600} RATE=${RATE:-100} CONNS=${CONNS:-32} PROFILE=${PROFILE:-debug} SLOW_MS=${SLOW_MS:-400} ROTATE=${ROTATE:-0}
OUT=${OUT:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}

if [ -z "${NO_PLOT:-}" ] && ! command -v gnuplot >/dev/null; then
  echo "installing gnuplot-nox (Debian package)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gnuplot-nox >&2
fi
case $PROFILE in
  release) cargo build --release --quiet --bin mollie-gateway --example soak; DIR=target/release ;;
  debug) cargo build --quiet --bin mollie-gateway --example soak; DIR=target/debug ;;
  *) echo "PROFILE: debug or release" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
echo "soak: ${SOAK_S} s, output in $OUT" >&2
rc=0
timeout $((SOAK_S + 120)) "$DIR/examples/soak" --gateway "$DIR/mollie-gateway" --secs "$SOAK_S" \
  --rate "$RATE" --conns "$CONNS" --slow-ms "$SLOW_MS" --rotate "$ROTATE" --out "$OUT" || rc=$?

if [ -z "${NO_PLOT:-}" ] && [ -s "$OUT/samples.csv" ]; then
  # Columns: t,rss_mib,fds,sockets,store_lock,threads,req,ok,e503,other_errors,outage
  gnuplot <<EOF
set terminal pngcairo size 1200,1000 font ",10"
set output "$OUT/soak.png"
set datafile separator ","
set datafile columnheaders
stats "$OUT/samples.csv" using 2 name "RSS" nooutput
stats "$OUT/samples.csv" using 7 name "REQ" nooutput
stats "$OUT/samples.csv" using (\$9 + \$10) name "ERR" nooutput
stats "$OUT/samples.csv" using 3 name "FDS" nooutput
set key top left
set multiplot layout 4,1 title "mollie-gateway soak: ${SOAK_S} s, 50 merchants, 2-s tokens (shaded: token endpoint down)"
set xlabel "time (s)"
set xrange [0:${SOAK_S} + 1]
set boxwidth 1
set style fill transparent solid 0.15 noborder
set yrange [0:*]
set ylabel "MiB"
plot "$OUT/samples.csv" using 1:(\$11*RSS_max*1.1) with boxes lc rgb "red" notitle, \
     "" using 1:2 with lines lw 2 title "RSS"
set ylabel "per second"
plot "$OUT/samples.csv" using 1:(\$11*REQ_max*1.1) with boxes lc rgb "red" notitle, \
     "" using 1:7 with lines title "requests", "" using 1:8 with lines title "200"
plot "$OUT/samples.csv" using 1:(\$11*(ERR_max+1)*1.1) with boxes lc rgb "red" notitle, \
     "" using 1:9 with impulses lw 2 title "503 + Retry-After", "" using 1:10 with impulses lw 2 title "other errors"
set ylabel "count"
plot "$OUT/samples.csv" using 1:(\$11*FDS_max*1.1) with boxes lc rgb "red" notitle, \
     "" using 1:3 with lines title "open fds", "" using 1:4 with lines title "sockets", \
     "" using 1:5 with lines title "store writes queued", "" using 1:6 with lines title "threads"
unset multiplot
EOF
  echo "plot: $OUT/soak.png" >&2
fi
exit $rc
