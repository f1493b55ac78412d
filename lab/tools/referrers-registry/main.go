// referrers-registry: go-containerregistry's in-memory OCI registry (pkg/registry) with its OCI 1.1 referrers
// API switched on, for tests on loopback. `crane registry serve` runs the same registry with the API off, and the
// registries that implement it natively (zot, olareg) are not served by the Go module proxy here.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:0", "host:port to listen on (loopback)")
	flag.Parse()
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatalf("listen on %s: %v", *address, err)
	}
	fmt.Fprintf(os.Stderr, "serving on %s\n", listener.Addr())
	server := &http.Server{
		Handler:           registry.New(registry.WithReferrersSupport(true)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(server.Serve(listener))
}
