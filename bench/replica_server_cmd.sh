#!/bin/bash
# For bench_http.py --compare-command 'bench/replica_server_cmd.sh {db} {port} [VFS_PARAMS]': a
# read replica of {db}: one sync of it to a file:// replica (our replicator), then `serve`
# reading that replica through the Litestream VFS (design/read-replicas.md), flags as
# bench_http's own server. VFS_PARAMS is appended to the DSN, e.g. '&hydration_enabled=true'.
# PYTHONPATH picks the code (as bench_http's --compare-with does); EXTRA adds serve flags.
set -euo pipefail
db="$1"; port="$2"; vfs_params="${3:-}"
rm -rf "$db-replica"
python -m replication replicate -once "$db" "file://$db-replica" >/dev/null
exec python -m sqlite_rest.cli serve \
    --db-dsn "file:replica.db?vfs=litestream&replica_url=file://$db-replica$vfs_params" \
    --http-addr "127.0.0.1:$port" --auth-disabled --security-allow-table items \
    --metrics-addr "" --workers "${WORKERS:-2}" ${EXTRA:-}
