#!/bin/sh
# The "verified" operator baseline of benchmark 1 (see BENCHMARKS.md): send power off
# to one BMC with ipmitool, then poll its status every 0.5 s until it reports off.
# Bounded: each ipmitool call at most 30 s, at most 60 polls. Exit 0 once verified off.
#   BENCH_BMC_HOST=127.0.0.1 BENCH_BMC_USER=admin BENCH_BMC_PASSWORD=password \
#     sh bench/ipmi_off_verified.sh PORT
port=$1
ipmi() {
    timeout 30 ipmitool -I lanplus -C 3 -H "$BENCH_BMC_HOST" -p "$port" \
        -U "$BENCH_BMC_USER" -P "$BENCH_BMC_PASSWORD" "$@"
}
ipmi chassis power off >/dev/null || exit 1
polls=0
while [ "$polls" -lt 60 ]; do
    sleep 0.5
    case "$(ipmi chassis power status)" in
        *"is off"*) exit 0 ;;
    esac
    polls=$((polls + 1))
done
exit 1
