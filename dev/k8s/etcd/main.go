// Command etcd is etcd's own server (etcdmain.Main, the `etcd` binary of the release), built by
// dev/k8s/build for the API server that knative/check-k8s starts on loopback.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
