#!/bin/sh
# A long job for config/examples/durable-jobs.toml: reads its spec (the
# request's JSON body) on stdin, then reports its progress as NDJSON, one
# line a step. The gateway keeps every line on Redis under the job's id.
spec=$(cat)
steps=${GATEWAY_QUERY_STEPS:-20}
echo "{\"status\":\"accepted\",\"job\":\"$GATEWAY_JOB_ID\",\"spec\":${spec:-null}}"
i=1
while [ "$i" -le "$steps" ]; do
  sleep 0.5
  echo "{\"status\":\"working\",\"step\":$i,\"of\":$steps}"
  i=$((i + 1))
done
echo "{\"status\":\"done\",\"result\":\"report-$GATEWAY_JOB_ID.pdf\"}"
