#!/usr/bin/env bash
# Deploy an overlay in the order kustomize cannot express (k8s/README.md, "Deploy"):
#   1. render it;
#   2. delete the previous release's migration Job (a Job's pod template cannot change);
#   3. apply everything but the services (label invo.network/phase=serve): the namespace, the
#      ConfigMaps, NATS, PostgreSQL in the sandbox, the NetworkPolicies, the Services, the Job;
#   4. wait for the Job to complete (stop if it fails);
#   5. apply everything: the Deployments roll onto the migrated schema;
#   6. wait for every rollout.
#
#   k8s/deploy.sh sandbox|production
#
# kubectl talks to the current context (KUBECONFIG, `kubectl config use-context`). KUBECTL names
# another kubectl binary; MIGRATE_TIMEOUT_S bounds the wait for the Job (default 1200).
set -euo pipefail

overlay=${1:?usage: k8s/deploy.sh sandbox|production}
here=$(cd "$(dirname "$0")" && pwd)
dir="$here/overlays/$overlay"
if [ ! -f "$dir/kustomization.yaml" ]; then
    echo "no overlay '$overlay' in $here/overlays" >&2
    exit 2
fi
kubectl=${KUBECTL:-kubectl}
ns=$(sed -n 's/^namespace: *//p' "$dir/kustomization.yaml")
timeout_s=${MIGRATE_TIMEOUT_S:-1200}

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
"$kubectl" kustomize "$dir" >"$rendered"

"$kubectl" --namespace "$ns" delete job invo-migrate --ignore-not-found --wait=true
"$kubectl" apply --filename "$rendered" --selector 'invo.network/phase!=serve'

echo "waiting for the migration Job (kubectl --namespace $ns logs job/invo-migrate)"
deadline=$((SECONDS + timeout_s))
while :; do
    conditions=$("$kubectl" --namespace "$ns" get job invo-migrate \
        --output 'jsonpath={range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
    case " $conditions " in
        *" Complete "*) break ;;
        *" Failed "*)
            echo "the migration Job failed; nothing else was rolled: kubectl --namespace $ns logs job/invo-migrate" >&2
            exit 1
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "the migration Job did not complete in ${timeout_s}s; nothing else was rolled" >&2
        exit 1
    fi
    sleep 5
done

"$kubectl" apply --filename "$rendered"
for deployment in $("$kubectl" --namespace "$ns" get deployment --selector invo.network/phase=serve --output name); do
    "$kubectl" --namespace "$ns" rollout status "$deployment" --timeout=10m
done
echo "deployed $overlay to namespace $ns"
