#!/usr/bin/env bash
# Deploys Weather Tweets with the kn CLI (kn >= 1.x, tested against the flags of
# knative-v1.23): one `kn service create --force` per function with the same image, env, secrets,
# ports, probes, resources and scaling as knative/base plus an overlay, then the dead-letter
# KafkaSink and the two KafkaSources from knative/base; first the NetworkPolicies of knative/base.
#
#   knative/deploy-kn.sh scale-to-zero|always-on
#
# KN_NO_WAIT=1 returns without waiting for each Service to become Ready (knative/check-k8s
# runs this against an API server that has no Knative controllers).
#
# Needs: kubectl and kn pointed at the cluster, Knative Serving + Eventing + the Kafka source
# and sink installed, Strimzi Kafka `weather` in namespace kafka, and the Secret
# weather-credentials in namespace weather (see knative/README.md).
# knative/test_manifests.py checks that this script and knative/base agree.
set -euo pipefail

usage() { echo "usage: $0 scale-to-zero|always-on" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
mode=$1
case $mode in
  scale-to-zero) min_scale=0 ;;
  always-on) min_scale=1 ;;
  *) usage ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
namespace=weather
registry=${IMAGE_REGISTRY:-ghcr.io/weather-tweets}
tag=${IMAGE_TAG:-0.1.0}

# kn has flags for runAsNonRoot, runAsUser, dropped capabilities and seccomp but not for
# readOnlyRootFilesystem, so every service starts from this skeleton (-f) and the flags below
# set everything else.
skeleton=$(mktemp)
trap 'rm -f "$skeleton"' EXIT

write_skeleton() {
  cat >"$skeleton" <<YAML
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: $1
  namespace: $namespace
spec:
  template:
    spec:
      containers:
        - name: $1
          image: $registry/$1:$tag
          securityContext:
            runAsNonRoot: true
            runAsUser: 65532
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities:
              drop:
                - ALL
            seccompProfile:
              type: RuntimeDefault
YAML
}

# apply NAME [kn flags…]: the settings every function shares, then the function's own.
apply() {
  local name=$1
  shift
  local scaling=(--scale-min "$min_scale" --scale-max 10 --scale-metric concurrency)
  if [[ $mode == scale-to-zero ]]; then
    scaling+=(--annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=30s)
  fi
  local wait=()
  [[ -z ${KN_NO_WAIT:-} ]] || wait=(--no-wait)
  write_skeleton "$name"
  # create --force replaces the whole Service, so switching modes is a clean update. Not
  # `kn service apply`: on an existing Service (kn 1.15, knative/check-k8s showed it) it drops
  # the container's name, which Knative then defaults to user-container.
  kn service create --force "$name" --namespace "$namespace" -f "$skeleton" "${wait[@]}" \
    --image "$registry/$name:$tag" \
    --concurrency-limit 0 --timeout 30 \
    --probe-readiness http:::/health/readiness --probe-readiness-opts PeriodSeconds=2 \
    --probe-liveness http:::/health/liveness --probe-liveness-opts PeriodSeconds=10 \
    "${scaling[@]}" "$@"
}

# Who may call the functions, before any of them has a pod (knative/README.md, "Who may call
# the functions"; the cluster-wide half, knative/cluster, is the cluster operator's to apply).
kubectl apply -f "$here/base/network-policies.yaml"

# producer first: ingest calls it.
apply producer --cluster-local --port h2c:8080 \
  --scale-target 10 \
  --request cpu=100m,memory=48Mi --limit cpu=1,memory=192Mi \
  --env KAFKA_BROKERS=weather-kafka-bootstrap.kafka:9092 \
  --env KAFKA_TOPIC=messages \
  --env KAFKA_LINGER_MS=5 \
  --env KAFKA_MESSAGE_TIMEOUT_MS=8000 \
  --env KAFKA_QUEUE_TIMEOUT_MS=2000 \
  --env EVENT_SOURCE=/weather-tweets/producer

apply ingest --no-cluster-local --port http1:8080 \
  --scale-target 10 \
  --request cpu=100m,memory=32Mi --limit cpu=1,memory=128Mi \
  --env PRODUCER_URL=http://producer.weather.svc.cluster.local \
  --env MAX_BODY_BYTES=16384 \
  --env PRODUCER_TIMEOUT_MS=12000 \
  --env HEADER_READ_TIMEOUT_MS=10000 \
  --env BODY_READ_TIMEOUT_MS=10000 \
  --env MAX_CONNECTIONS=2048 \
  --env-value-from REDIS_URL=secret:weather-credentials:REDIS_URL \
  --env REDIS_KEY_PREFIX=weather: \
  --env REDIS_TIMEOUT_MS=2000 \
  --env IDEMPOTENCY_KEY_TTL_S=86400 \
  --env IDEMPOTENCY_KEYS_PER_HOUR=10000

apply counter --cluster-local --port http1:8080 \
  --scale-target 100 \
  --request cpu=100m,memory=32Mi --limit cpu=1,memory=128Mi \
  --env-value-from REDIS_URL=secret:weather-credentials:REDIS_URL \
  --env REDIS_KEY_PREFIX=weather: \
  --env KAFKA_BROKERS=weather-kafka-bootstrap.kafka:9092 \
  --env KAFKA_TOPIC=messages \
  --env KAFKA_DEAD_LETTER_TOPIC=messages-dlq \
  --env KAFKA_TIMEOUT_MS=2000 \
  --env DEDUP_TTL_S=604800 \
  --env REDIS_TIMEOUT_MS=2000

apply archiver --cluster-local --port http1:8080 \
  --scale-target 100 \
  --request cpu=100m,memory=48Mi --limit cpu=1,memory=192Mi \
  --env-value-from MONGODB_URI=secret:weather-credentials:MONGODB_URI \
  --env MONGODB_DATABASE=weather \
  --env MONGODB_COLLECTION=tweets \
  --env MONGODB_TIMEOUT_MS=2000

# The dead-letter sink before the sources that name it; the same files the local runner reads.
kubectl apply -f "$here/base/dead-letters.yaml"
kubectl apply -f "$here/base/counter-source.yaml" -f "$here/base/archiver-source.yaml"
