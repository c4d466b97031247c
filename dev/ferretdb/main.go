// Command ferretdb runs FerretDB v1 with its SQLite backend on a loopback address: the
// MongoDB-wire server of the local stack. FerretDB's own command panics at start-up on a
// missing version file when built with `go install`, so we embed its library package instead.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "address to serve the MongoDB wire protocol on")
	dir := flag.String("dir", "data", "folder for the SQLite databases")
	flag.Parse()

	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatalf("creating %s: %v", *dir, err)
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Handler:   "sqlite",
		SQLiteURL: "file:" + *dir + "/",
	})
	if err != nil {
		log.Fatalf("starting FerretDB: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Printf("FerretDB serving the MongoDB wire protocol on %s, data in %s", *listen, *dir)
	f.Run(ctx)
}
