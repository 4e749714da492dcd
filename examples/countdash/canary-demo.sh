#!/bin/bash
# countdash: count-api updated with a canary and a promote while the dashboard is polled
# (the README's transcript). Needs root, like -dev-connect; uses ports 4646 and 9002.
set -u
cd "$(dirname "$0")"
Y=${YURT:-$(cd ../.. && pwd)/.venv/bin/yurt}
export NOMAD_ADDR=http://127.0.0.1:4646
D=$(mktemp -d)
$Y agent -dev-connect > $D/agent.log 2>&1 &
AGENT=$!
for i in $(seq 1 60); do curl -s $NOMAD_ADDR/v1/agent/health >/dev/null && break; sleep 0.5; done
# v1: two count-api instances, a canary update strategy
sed -e 's/  group "api" {/  group "api" {\n    count = 2\n    update {\n      canary           = 1\n      min_healthy_time = "2s"\n    }/' countdash.nomad > $D/countdash.nomad
cp counter_api.py dashboard.py $D/
cd $D
echo '$ yurt job run countdash.nomad'
$Y job run countdash.nomad 2>&1 | tail -3
# poll the dashboard's count while the update goes on
( n=0; bad=0; while [ ! -e $D/stop ]; do c=$(curl -s -m 2 http://127.0.0.1:9002/api/count); n=$((n+1)); case "$c" in *'"count": -1'*|"") bad=$((bad+1));; esac; sleep 0.1; done; echo "$n polls of the dashboard, $bad unreachable" > $D/polls ) &
python3 - <<PY
p="$D/countdash.nomad"
s=open(p).read()
s=s.replace('task "web" {\n      driver = "exec"', 'task "web" {\n      driver = "exec"\n      env {\n        RELEASE = "v2"\n      }',1)
open(p,"w").write(s)
PY
echo '$ yurt job run countdash.nomad      # count-api v2: one canary beside the two v1 instances'
$Y job run countdash.nomad 2>&1
echo "exit $?"
echo '$ yurt job promote countdash'
$Y job promote countdash 2>&1
echo "exit $?"
touch $D/stop; sleep 1; cat $D/polls
$Y job status countdash 2>&1 | tail -12
$Y job stop -purge countdash >/dev/null 2>&1
kill $AGENT; wait $AGENT
