// pstest-server: Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/pstest, from
// Debian's golang-google-cloud-dev) on a fixed address, for tests/pubsub.rs. pstest listens
// on a port of its own choosing; this relays every connection from -listen to it.
// Built by scripts/services.sh, offline: GO111MODULE=off GOPATH=<dir>:/usr/share/gocode.
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/pstest"
)

func relay(client net.Conn, backend string) {
	defer client.Close()
	server, err := net.Dial("tcp", backend)
	if err != nil {
		log.Printf("relay: %v", err)
		return
	}
	defer server.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(server, client)
		server.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(client, server)
	<-done
}

func main() {
	addr := flag.String("listen", "127.0.0.1:8085", "where the Pub/Sub gRPC API answers")
	flag.Parse()
	fake := pstest.NewServer()
	defer fake.Close()
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen on %s: %v", *addr, err)
	}
	log.Printf("pstest on %s", *addr)
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go relay(conn, fake.Addr)
		}
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	listener.Close()
}
