#!/bin/sh
# Submit the next distillation round as a KubeRay RayJob and wait for it to end, with a timeout.
# Run by the CronJob of cluster/distill-schedule.yaml (see cluster/DISTILL_SCHEDULE.md), or by hand
# from any machine with kubectl access:
#   RAYJOB_SPEC=cluster/distill-round-rayjob.yaml DONE_FILE= sh cluster/distill-next-round.sh
#
# 1. If DONE_FILE (the last round's results.json) records the round finished, print so and exit 0
#    without creating anything: once the chain is done no GPU cluster is started any more.
# 2. kubectl create -f RAYJOB_SPEC (a RayJob with generateName: one new object per run).
# 3. Poll its status every POLL_S seconds until it is terminal:
#    - .status.jobDeploymentStatus Complete, Failed or ValidationFailed (KubeRay's terminal
#      deployment states; ValidationFailed never leaves that state, so a loop that waits for
#      Complete/Failed only would spin for ever);
#    - or .status.jobStatus SUCCEEDED, FAILED or STOPPED (Ray's terminal job states) held for
#      GRACE_S seconds without KubeRay moving the deployment on: in K8sJobMode KubeRay waits for
#      the submitter pod as well, and a submitter that never exits must not hold the schedule.
#      A deployment in Retrying (backoffLimit) is not the end: the retry is waited for.
#    - or TIMEOUT_S seconds have passed: the RayJob is deleted (its cluster with it; the round
#      resumes from its latest checkpoint next time) and the script exits 124.
# Exit status: 0 the round succeeded (or there was nothing to do), 1 it failed, was stopped or
# was refused, 2 bad setup (no manifest), 124 timeout. kubectl errors while polling (an API
# server restart) are retried until the timeout.
set -u

SPEC=${RAYJOB_SPEC:-/spec/rayjob.yaml}
DONE_FILE=${DONE_FILE-/data/runs/distill-digits/round-08/results.json}
POLL_S=${POLL_S:-30}
TIMEOUT_S=${TIMEOUT_S:-10800}
GRACE_S=${GRACE_S:-300}
KUBECTL=${KUBECTL:-kubectl}

# results.json is written by pipeline.io.atomic_write_json (indent 2, sorted keys): the top-level
# key is the line '  "finished": true'.
if [ -n "$DONE_FILE" ] && grep -q '^  "finished": true' "$DONE_FILE" 2>/dev/null; then
  echo "the last round is already finished ($DONE_FILE): no RayJob created"
  exit 0
fi
if [ ! -r "$SPEC" ]; then
  echo "error: no RayJob manifest at $SPEC (set RAYJOB_SPEC)" >&2
  exit 2
fi

name=$($KUBECTL create -f "$SPEC" -o name) || { echo "error: kubectl create -f $SPEC failed" >&2; exit 1; }
echo "created $name; waiting for it (every ${POLL_S} s, at most ${TIMEOUT_S} s)"

start=$(date +%s)
dep="" job="" since=""
while :; do
  now=$(date +%s)
  if out=$($KUBECTL get "$name" -o 'jsonpath={.status.jobDeploymentStatus}/{.status.jobStatus}' 2>/dev/null); then
    dep=${out%%/*}
    job=${out#*/}
    case "$dep" in
      Complete | Failed | ValidationFailed) break ;;
      Retrying) since="" ;;
      *)
        case "$job" in
          SUCCEEDED | FAILED | STOPPED)
            [ -n "$since" ] || since=$now
            if [ $((now - since)) -ge "$GRACE_S" ]; then
              echo "$name: job $job, deployment still '$dep' after ${GRACE_S} s: taking the job's state as final"
              break
            fi
            ;;
          *) since="" ;;
        esac
        ;;
    esac
  else
    echo "kubectl get $name failed; retrying" >&2
  fi
  if [ $((now - start)) -ge "$TIMEOUT_S" ]; then
    echo "timeout: $name not finished after ${TIMEOUT_S} s (deployment '$dep', job '$job'); deleting it" >&2
    $KUBECTL delete "$name" --wait=false >&2 || true
    exit 124
  fi
  sleep "$POLL_S"
done

echo "$name: deployment '$dep', job '$job'"
if [ "$job" = SUCCEEDED ] && [ "$dep" != Failed ] && [ "$dep" != ValidationFailed ]; then
  exit 0
fi
why=$($KUBECTL get "$name" -o 'jsonpath={.status.reason}: {.status.message}' 2>/dev/null) || why=""
echo "$name did not succeed${why:+: $why}" >&2
exit 1
