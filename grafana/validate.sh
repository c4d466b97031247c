#!/usr/bin/env bash
# Validates grafana/ offline: the validator's own tests (negative cases included), then every
# dashboard against metrics.yaml and the datasource provisioning. Go modules come from the
# default Go module cache (downloaded once through the ordinary Go proxy settings).
set -euo pipefail
cd "$(dirname "$0")/validate"
go test ./...
go run . ../
