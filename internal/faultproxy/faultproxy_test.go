package faultproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo listens on a free loopback port and echoes every connection.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// freeAddr is a loopback address nothing listens on a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// roundTrip writes msg and reads it back, giving up at the deadline.
func roundTrip(c net.Conn, msg string, deadline time.Time) error {
	_ = c.SetDeadline(deadline)
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return errors.New("echoed " + string(got))
	}
	return nil
}

// TestPartitionHoldsAndHeals: a connection through the dialer works; cut,
// its bytes are held (reads time out) and a new connection hangs until its
// context ends; healed, the held bytes arrive and new connections open. A
// connection straight to the advertised address is counted as a bypass.
func TestPartitionHoldsAndHeals(t *testing.T) {
	n := New()
	defer n.Close()
	real := echo(t)
	advertised, err := n.Advertise("b", real)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := n.Advertise("b", real); err != nil || again != advertised {
		t.Fatalf("advertised %s, then %s, %v", advertised, again, err)
	}
	dial := n.Dialer("a")
	c, err := dial(context.Background(), advertised)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "up", time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("before the partition: %v", err)
	}

	n.Partition([]string{"a"}, []string{"b"})
	if err := roundTrip(c, "held", time.Now().Add(200*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("across the cut: %v, want a timeout", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if _, err := dial(ctx, advertised); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dialling across the cut: %v, want the context's deadline", err)
	}
	cancel()
	if _, err := n.Dialer("b")(context.Background(), advertised); err != nil {
		t.Fatalf("b to itself during the partition: %v", err)
	}

	n.Heal()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("held"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after healing, the held bytes: %q %v", got, err)
	}
	c2, err := dial(context.Background(), advertised)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := roundTrip(c2, "healed", time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("a new connection after healing: %v", err)
	}

	if _, err := dial(context.Background(), freeAddr(t)); err == nil {
		t.Fatal("the dialer connected to an address no node advertises")
	}
	if n.Bypasses() != 0 {
		t.Fatalf("%d bypasses before any", n.Bypasses())
	}
	direct, err := net.Dial("tcp", advertised)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if err := roundTrip(direct, "direct", time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n.Bypasses() != 1 {
		t.Fatalf("%d bypasses counted, want 1", n.Bypasses())
	}
}
